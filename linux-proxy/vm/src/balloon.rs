//! The balloon policy: a pure, deterministic function from what a node sees of its live VMs
//! (memory weight, ceiling, balloon target and actual, the guest's MemTotal and MemAvailable)
//! and a node-wide budget to new balloon targets. `ppn-node`'s balloon controller runs it every
//! second and applies what changed (docs/balloon.md has the formulas).
//!
//! All figures are MiB unless named `_kib`. In short, per VM `i` with balloon actual `A`:
//!
//! * `used = A − MemAvailable`: everything the guest cannot give up (its kernel's reserve is in
//!   it: `A − MemTotal`). Ballooning moves `A` and MemAvailable together, so `used` does not
//!   depend on the controller's own action.
//! * `floor = clamp(up2(used + headroom), min(min_target, C), C)`, `C` the ceiling rounded
//!   down to 2 MiB.
//! * `want`: the target at which MemAvailable would be `comfort_pct` % of MemTotal (at least
//!   `headroom`), clamped to `[floor, C]`.
//! * The budget minus the floors is shared in two rounds of weighted water-filling: first up to
//!   `want` (the VMs under pressure), then what is left up to `C` (so with no overcommit every
//!   VM keeps its ceiling). Idle VMs give back: their `want` is near their floor, so in a tight
//!   budget they end up there.
//! * Hysteresis: a change smaller than `min_step_mib` is not made (the current target is held)
//!   unless the budget needs it.
//! * Floors win: if they do not fit in the budget, every target is its floor and the plan
//!   reports the overcommit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Balloon targets are multiples of this (the virtio-mem block size).
pub const GRANULE_MIB: u64 = 2;
/// Memory weights are 1..=10000 (as in [`crate::spec::Weights`]).
pub const MAX_WEIGHT: u32 = 10_000;

/// Policy errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonError {
    #[error("balloon policy: VM {0} is listed twice")]
    DuplicateVm(String),
    #[error("balloon policy: VM {name}: memory weight {weight} is not in 1..=10000")]
    InvalidWeight { name: String, weight: u32 },
    #[error("balloon policy: VM {0}: ceiling is 0 MiB")]
    ZeroCeiling(String),
    #[error("balloon policy: {0}")]
    InvalidConfig(String),
}

/// The policy's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// No balloon target goes below this (unless the ceiling is lower).
    pub min_target_mib: u64,
    /// MemAvailable a VM always keeps: `floor = used + headroom`.
    pub headroom_mib: u64,
    /// What a VM under pressure asks for: the target at which MemAvailable would be this
    /// share of MemTotal (percent, 0..=90).
    pub comfort_pct: u64,
    /// Below this MemAvailable share (percent) a VM is labelled under pressure.
    pub pressure_pct: u64,
    /// Above this MemAvailable share (percent) a VM is labelled idle.
    pub idle_pct: u64,
    /// Smallest change made (a multiple of 2 MiB): hysteresis against flapping.
    pub min_step_mib: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { min_target_mib: 128, headroom_mib: 64, comfort_pct: 40, pressure_pct: 15, idle_pct: 60, min_step_mib: 8 }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), BalloonError> {
        let bad = |what: String| Err(BalloonError::InvalidConfig(what));
        if self.comfort_pct > 90 {
            return bad(format!("comfort_pct {} is over 90", self.comfort_pct));
        }
        if self.pressure_pct > self.idle_pct || self.idle_pct > 100 {
            return bad(format!("want pressure_pct {} <= idle_pct {} <= 100", self.pressure_pct, self.idle_pct));
        }
        if self.min_step_mib == 0 || !self.min_step_mib.is_multiple_of(GRANULE_MIB) {
            return bad(format!("min_step_mib {} is not a positive multiple of 2", self.min_step_mib));
        }
        Ok(())
    }
}

/// The guest's own memory figures (its agent's latest report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMem {
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
}

/// What the controller knows of one live VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInput {
    pub name: String,
    /// Memory weight, 1..=10000.
    pub weight: u32,
    /// Base plus plugged memory: the most the balloon can give the guest.
    pub ceiling_mib: u64,
    /// The target the controller set last (`None`: none yet; the actual counts as current).
    pub target_mib: Option<u64>,
    /// `query-balloon` actual; `None` while the guest's balloon driver is not up.
    pub actual_mib: Option<u64>,
    /// The guest's latest report; `None` while there is none.
    pub guest: Option<GuestMem>,
}

/// How a VM's memory looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pressure {
    /// MemAvailable below `pressure_pct` of MemTotal.
    Pressure,
    Normal,
    /// MemAvailable above `idle_pct` of MemTotal.
    Idle,
    /// No guest report or no balloon: the controller holds the VM where it is.
    Unobserved,
}

/// The policy's answer for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    pub name: String,
    pub weight: u32,
    pub ceiling_mib: u64,
    /// `actual − MemAvailable` (0 when unobserved).
    pub used_mib: u64,
    pub floor_mib: u64,
    pub want_mib: u64,
    /// The target the VM has now (the last one set, else the actual, else the ceiling).
    pub current_mib: u64,
    pub target_mib: u64,
    /// `target_mib != current_mib`: the controller sends it.
    pub changed: bool,
    pub pressure: Pressure,
    pub reason: String,
}

/// The policy's answer for the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub vms: Vec<VmPlan>,
    pub budget_mib: u64,
    pub sum_ceilings_mib: u64,
    pub sum_floors_mib: u64,
    pub sum_targets_mib: u64,
    /// Floors (and held VMs) beyond the budget; 0 when they fit.
    pub overcommit_mib: u64,
}

fn up2(mib: u64) -> u64 {
    mib.div_ceil(GRANULE_MIB) * GRANULE_MIB
}

fn down2(mib: u64) -> u64 {
    mib / GRANULE_MIB * GRANULE_MIB
}

/// Weighted water-filling in whole granules: shares `spare` among items `(room, weight)` in
/// proportion to weight, none beyond its room. Returns the shares; their sum is
/// `min(spare, Σ room)`. Deterministic; remainders go to the highest weights first (then the
/// lowest index), so a higher weight with at least the same room never gets less.
pub fn water_fill(spare: u64, items: &[(u64, u32)]) -> Vec<u64> {
    let mut share = vec![0u64; items.len()];
    let mut spare = u128::from(spare);
    let mut active: Vec<usize> = (0..items.len()).filter(|&i| items[i].0 > 0).collect();
    while !active.is_empty() && spare > 0 {
        let total_w: u128 = active.iter().map(|&i| u128::from(items[i].1)).sum();
        // Items whose proportional share covers their room are filled; the others then share
        // what is left among fewer.
        let (full, rest): (Vec<usize>, Vec<usize>) =
            active.iter().partition(|&&i| u128::from(items[i].0) * total_w <= spare * u128::from(items[i].1));
        if !full.is_empty() {
            for i in full {
                share[i] = items[i].0;
                spare -= u128::from(items[i].0);
            }
            active = rest;
            continue;
        }
        let mut given = 0u128;
        for &i in &active {
            let g = spare * u128::from(items[i].1) / total_w;
            share[i] = g as u64;
            given += g;
        }
        let mut left = spare - given;
        let mut order = active.clone();
        order.sort_by_key(|&i| (std::cmp::Reverse(items[i].1), i));
        for i in order {
            if left == 0 {
                break;
            }
            // Not full, so share < room: one more fits.
            share[i] += 1;
            left -= 1;
        }
        break;
    }
    share
}

struct Work {
    pinned: bool,
    floor: u64,
    want: u64,
    cap: u64,
    current: u64,
}

/// Runs the policy. `budget_mib`: the guest memory the node grants in total; `None` is the sum
/// of the ceilings (no overcommit).
pub fn plan(cfg: &PolicyConfig, budget_mib: Option<u64>, vms: &[VmInput]) -> Result<Plan, BalloonError> {
    cfg.validate()?;
    let mut seen = BTreeSet::new();
    for v in vms {
        if !seen.insert(v.name.as_str()) {
            return Err(BalloonError::DuplicateVm(v.name.clone()));
        }
        if !(1..=MAX_WEIGHT).contains(&v.weight) {
            return Err(BalloonError::InvalidWeight { name: v.name.clone(), weight: v.weight });
        }
        if v.ceiling_mib == 0 {
            return Err(BalloonError::ZeroCeiling(v.name.clone()));
        }
    }
    let sum_ceilings: u64 = vms.iter().map(|v| v.ceiling_mib).sum();
    let budget = budget_mib.unwrap_or(sum_ceilings);

    let mut plans = Vec::with_capacity(vms.len());
    let mut work = Vec::with_capacity(vms.len());
    for v in vms {
        let c = v.ceiling_mib;
        let cap = down2(c).max(GRANULE_MIB.min(c));
        let current = v.target_mib.or(v.actual_mib).unwrap_or(c).min(c);
        let (pressure, used, floor, want, pinned, reason) = match (v.actual_mib, v.guest) {
            (None, _) => (Pressure::Unobserved, 0, current, current, true, "balloon driver not up: held".to_owned()),
            (Some(_), None) => (Pressure::Unobserved, 0, current, current, true, "no guest report: held".to_owned()),
            (Some(actual), Some(g)) => {
                let avail_mib = g.mem_available_kib / 1024;
                let used = actual.saturating_sub(avail_mib);
                let lowest = cfg.min_target_mib.min(cap);
                let floor = up2(used + cfg.headroom_mib).clamp(lowest, cap);
                let guest_used_kib = g.mem_total_kib.saturating_sub(g.mem_available_kib);
                let comfort_kib = guest_used_kib * cfg.comfort_pct / (100 - cfg.comfort_pct);
                let want = up2(used + (comfort_kib.div_ceil(1024)).max(cfg.headroom_mib)).clamp(floor, cap);
                let pct = g.mem_available_kib.saturating_mul(100).checked_div(g.mem_total_kib).unwrap_or(0);
                let pressure = if pct < cfg.pressure_pct {
                    Pressure::Pressure
                } else if pct > cfg.idle_pct {
                    Pressure::Idle
                } else {
                    Pressure::Normal
                };
                (pressure, used, floor, want, false, String::new())
            }
        };
        plans.push(VmPlan {
            name: v.name.clone(),
            weight: v.weight,
            ceiling_mib: c,
            used_mib: used,
            floor_mib: floor,
            want_mib: want,
            current_mib: current,
            target_mib: floor,
            changed: false,
            pressure,
            reason,
        });
        work.push(Work { pinned, floor, want, cap, current });
    }

    let sum_floors: u64 = work.iter().map(|w| w.floor).sum();
    let active: Vec<usize> = (0..work.len()).filter(|&i| !work[i].pinned).collect();
    if sum_floors > budget {
        for &i in &active {
            plans[i].target_mib = work[i].floor;
            plans[i].reason = "floor (floors exceed the budget)".into();
        }
    } else {
        let spare_units = (budget - sum_floors) / GRANULE_MIB;
        let units = |mib: u64| mib / GRANULE_MIB;
        // Round 1: up to `want`, by weight (the VMs under pressure).
        let r1: Vec<(u64, u32)> =
            active.iter().map(|&i| (units(work[i].want) - units(work[i].floor), vms[i].weight)).collect();
        let s1 = water_fill(spare_units, &r1);
        let left = spare_units - s1.iter().sum::<u64>();
        // Round 2: what is left, up to the ceiling, by weight.
        let r2: Vec<(u64, u32)> = active
            .iter()
            .zip(&s1)
            .map(|(&i, &s)| (units(work[i].cap).saturating_sub(units(work[i].floor) + s), vms[i].weight))
            .collect();
        let s2 = water_fill(left, &r2);
        for (k, &i) in active.iter().enumerate() {
            let t = work[i].floor + (s1[k] + s2[k]) * GRANULE_MIB;
            plans[i].target_mib = t;
            plans[i].reason = if t >= work[i].cap {
                "ceiling".into()
            } else if s2[k] > 0 {
                "want met; share of the rest by weight".into()
            } else if t >= work[i].want {
                "want met".into()
            } else if s1[k] > 0 {
                "share by weight toward want".into()
            } else {
                "floor".into()
            };
        }
    }
    // Hysteresis: hold a VM whose change would be smaller than the step.
    let mut held = Vec::new();
    for &i in &active {
        let (cur, t) = (work[i].current, plans[i].target_mib);
        if cur != t && cur.abs_diff(t) < cfg.min_step_mib && cur >= work[i].floor && cur <= vms[i].ceiling_mib {
            held.push((i, t));
            plans[i].reason = format!("held (ideal {t} MiB is < {} MiB away)", cfg.min_step_mib);
            plans[i].target_mib = cur;
        }
    }
    // A held decrease gives way if the budget needs it (when the floors fit): largest excess
    // first, then the lowest weight, then the name. When they do not fit, a hold above the
    // floor stays and adds to the reported overcommit.
    held.retain(|&(i, t)| sum_floors <= budget && work[i].current > t);
    held.sort_by(|a, b| {
        let ex = |&(i, t): &(usize, u64)| work[i].current - t;
        ex(b).cmp(&ex(a)).then(vms[a.0].weight.cmp(&vms[b.0].weight)).then(vms[a.0].name.cmp(&vms[b.0].name))
    });
    let mut sum: u64 = plans.iter().map(|p| p.target_mib).sum();
    for (i, t) in held {
        if sum <= budget {
            break;
        }
        sum -= work[i].current - t;
        plans[i].target_mib = t;
        plans[i].reason = "step below the minimum, made for the budget".into();
    }
    for (p, w) in plans.iter_mut().zip(&work) {
        if w.pinned {
            p.target_mib = w.current;
        }
        p.changed = p.target_mib != w.current;
    }
    let sum_targets: u64 = plans.iter().map(|p| p.target_mib).sum();
    Ok(Plan {
        vms: plans,
        budget_mib: budget,
        sum_ceilings_mib: sum_ceilings,
        sum_floors_mib: sum_floors,
        sum_targets_mib: sum_targets,
        overcommit_mib: sum_targets.saturating_sub(budget),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A VM whose balloon follows its target, with `reserve` MiB of the guest's memory outside
    /// MemTotal and `guest_used` MiB used inside it.
    fn vm(name: &str, weight: u32, ceiling: u64, actual: u64, reserve: u64, guest_used: u64) -> VmInput {
        let total = actual - reserve;
        VmInput {
            name: name.into(),
            weight,
            ceiling_mib: ceiling,
            target_mib: None,
            actual_mib: Some(actual),
            guest: Some(GuestMem { mem_total_kib: total * 1024, mem_available_kib: (total - guest_used) * 1024 }),
        }
    }

    /// What the VMs look like once the balloons reached the plan's targets.
    fn follow(vms: &[VmInput], plan: &Plan) -> Vec<VmInput> {
        vms.iter()
            .zip(&plan.vms)
            .map(|(v, p)| {
                let mut v = v.clone();
                v.target_mib = Some(p.target_mib);
                if let (Some(a), Some(g)) = (v.actual_mib, v.guest.as_mut()) {
                    let t = p.target_mib;
                    g.mem_total_kib = (g.mem_total_kib + t * 1024).saturating_sub(a * 1024);
                    g.mem_available_kib = (g.mem_available_kib + t * 1024).saturating_sub(a * 1024);
                    v.actual_mib = Some(t);
                }
                v
            })
            .collect()
    }

    fn target(p: &Plan, name: &str) -> u64 {
        p.vms.iter().find(|v| v.name == name).unwrap().target_mib
    }

    #[test]
    fn no_budget_keeps_every_vm_at_its_ceiling() {
        let vms = [vm("a", 100, 512, 512, 120, 20), vm("b", 300, 768, 768, 120, 20)];
        let p = plan(&PolicyConfig::default(), None, &vms).unwrap();
        assert_eq!(p.budget_mib, 1280);
        assert_eq!((target(&p, "a"), target(&p, "b")), (512, 768));
        assert!(p.vms.iter().all(|v| !v.changed));
        assert_eq!(p.overcommit_mib, 0);
    }

    #[test]
    fn a_tight_budget_is_shared_above_the_floors_by_weight() {
        // used = 140 each: floor 204, want 204 (guest_used 20 → comfort 14 < headroom 64).
        let vms = [vm("a", 100, 512, 512, 120, 20), vm("b", 300, 512, 512, 120, 20)];
        let p = plan(&PolicyConfig::default(), Some(800), &vms).unwrap();
        assert_eq!(p.sum_floors_mib, 408);
        // Spare 392 MiB = 196 granules: a 49, b 147.
        assert_eq!((target(&p, "a"), target(&p, "b")), (204 + 98, 204 + 294));
        assert_eq!(p.sum_targets_mib, 800);
        assert!(p.vms.iter().all(|v| v.changed));
    }

    #[test]
    fn a_vm_under_pressure_gets_its_want_before_the_rest_is_shared() {
        // b uses 300 MiB inside the guest: MemAvailable ~ 12 % (pressure), want ~ 620.
        let vms = [vm("a", 100, 1024, 512, 120, 20), vm("b", 100, 1024, 512, 120, 340)];
        let p = plan(&PolicyConfig::default(), Some(1024), &vms).unwrap();
        let (a, b) = (&p.vms[0], &p.vms[1]);
        assert_eq!(b.pressure, Pressure::Pressure);
        assert_eq!(a.pressure, Pressure::Idle);
        assert_eq!(a.floor_mib, 204);
        assert_eq!(b.floor_mib, 524);
        // b's want: used 460 + 340·40/60 = 227 → 688.
        assert_eq!(b.want_mib, 688);
        // Spare 296: round 1 gives b its 164 to want; round 2 splits the other 132 evenly.
        assert_eq!((a.target_mib, b.target_mib), (204 + 66, 688 + 66));
        assert_eq!(p.sum_targets_mib, 1024);
    }

    #[test]
    fn floors_win_when_they_do_not_fit() {
        let vms = [vm("a", 100, 512, 512, 120, 20), vm("b", 100, 512, 512, 120, 20)];
        let p = plan(&PolicyConfig::default(), Some(300), &vms).unwrap();
        assert_eq!((target(&p, "a"), target(&p, "b")), (204, 204));
        assert_eq!(p.overcommit_mib, 108);
        assert!(p.vms.iter().all(|v| v.reason.contains("floors exceed")));
    }

    #[test]
    fn a_floor_that_wobbles_below_the_target_moves_nothing_when_floors_win() {
        // Measured while a balloon moves, `used` can be a little off: a floor 2 MiB lower.
        let mut vms = [vm("a", 100, 512, 512, 120, 20), vm("b", 100, 512, 512, 120, 20)];
        vms[0].target_mib = Some(206);
        vms[1].target_mib = Some(204);
        let p = plan(&PolicyConfig::default(), Some(300), &vms).unwrap();
        assert_eq!((target(&p, "a"), target(&p, "b")), (206, 204));
        assert!(p.vms.iter().all(|v| !v.changed));
        assert_eq!(p.overcommit_mib, 110);
    }

    #[test]
    fn small_changes_are_held_unless_the_budget_needs_them() {
        let mut vms = [vm("a", 100, 512, 512, 120, 20), vm("b", 100, 512, 512, 120, 20)];
        vms[0].target_mib = Some(356);
        vms[1].target_mib = Some(356);
        // Ideal 354 each (budget 708): 2 MiB away, held, but the sum would be 712 > 708.
        let p = plan(&PolicyConfig::default(), Some(708), &vms).unwrap();
        assert_eq!(p.sum_targets_mib, 708);
        // Ideal 356 each for 712; 716 gives 358 each: held at 356.
        let p = plan(&PolicyConfig::default(), Some(716), &vms).unwrap();
        assert_eq!((target(&p, "a"), target(&p, "b")), (356, 356));
        assert!(p.vms.iter().all(|v| !v.changed && v.reason.starts_with("held")));
    }

    #[test]
    fn unobserved_vms_are_held_and_count_against_the_budget() {
        let mut booting = vm("boot", 100, 512, 512, 120, 20);
        booting.guest = None;
        let mut no_driver = vm("nodrv", 100, 256, 256, 120, 20);
        no_driver.actual_mib = None;
        let p =
            plan(&PolicyConfig::default(), Some(1024), &[booting, no_driver, vm("c", 100, 512, 512, 120, 20)]).unwrap();
        assert_eq!((target(&p, "boot"), target(&p, "nodrv")), (512, 256));
        // 1024 − 768 held leaves 256 for c: its floor 204 and 52 more.
        assert_eq!(target(&p, "c"), 256);
        assert!(p.vms[..2].iter().all(|v| v.pressure == Pressure::Unobserved && !v.changed));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let a = vm("a", 100, 512, 512, 120, 20);
        assert_eq!(
            plan(&PolicyConfig::default(), None, &[a.clone(), a.clone()]),
            Err(BalloonError::DuplicateVm("a".into()))
        );
        let mut w = a.clone();
        w.weight = 0;
        assert!(matches!(plan(&PolicyConfig::default(), None, &[w]), Err(BalloonError::InvalidWeight { .. })));
        let cfg = PolicyConfig { min_step_mib: 3, ..PolicyConfig::default() };
        assert!(matches!(plan(&cfg, None, &[a]), Err(BalloonError::InvalidConfig(_))));
    }

    #[test]
    fn water_fill_is_proportional_and_capped() {
        assert_eq!(water_fill(100, &[(1000, 1), (1000, 3)]), vec![25, 75]);
        assert_eq!(water_fill(100, &[(10, 1), (1000, 1)]), vec![10, 90]);
        assert_eq!(water_fill(10, &[(0, 1), (1000, 1)]), vec![0, 10]);
        assert_eq!(water_fill(1000, &[(5, 1), (7, 9)]), vec![5, 7]);
        // Remainders to the higher weight.
        assert_eq!(water_fill(3, &[(10, 1), (10, 2), (10, 1)]), vec![1, 2, 0]);
    }

    fn arb_vm(i: usize) -> impl Strategy<Value = VmInput> {
        (1u32..=10_000, 128u64..4096, 0u64..=100, 40u64..200, 0u64..=100, any::<bool>()).prop_map(
            move |(weight, ceiling, actual_pct, reserve, used_pct, observed)| {
                let actual = (ceiling * actual_pct / 100).max(reserve + 8).min(ceiling).max(1);
                let reserve = reserve.min(actual / 2);
                let total = actual - reserve;
                let guest_used = total * used_pct / 100;
                VmInput {
                    name: format!("vm-{i}"),
                    weight,
                    ceiling_mib: ceiling,
                    target_mib: None,
                    actual_mib: Some(actual),
                    guest: observed.then_some(GuestMem {
                        mem_total_kib: total * 1024,
                        mem_available_kib: (total - guest_used) * 1024,
                    }),
                }
            },
        )
    }

    fn arb_vms() -> impl Strategy<Value = Vec<VmInput>> {
        (1usize..6).prop_flat_map(|n| (0..n).map(arb_vm).collect::<Vec<_>>())
    }

    proptest! {
        #[test]
        fn targets_fit_the_budget_and_stay_within_floor_and_ceiling(
            vms in arb_vms(), budget in 0u64..20_000
        ) {
            let p = plan(&PolicyConfig::default(), Some(budget), &vms).unwrap();
            for v in &p.vms {
                prop_assert!(v.floor_mib <= v.target_mib && v.target_mib <= v.ceiling_mib, "{v:?}");
            }
            if p.sum_floors_mib <= budget {
                prop_assert!(p.sum_targets_mib <= budget, "{p:?}");
                prop_assert_eq!(p.overcommit_mib, 0);
            } else {
                prop_assert_eq!(p.overcommit_mib, p.sum_targets_mib - budget);
            }
            // The budget is used up to rounding and held steps, unless everyone is (near) the
            // ceiling or unobserved.
            let all_full = p.vms.iter().all(|v| v.target_mib + GRANULE_MIB + PolicyConfig::default().min_step_mib > v.ceiling_mib
                || v.pressure == Pressure::Unobserved);
            if p.sum_floors_mib <= budget && !all_full {
                let slack = budget - p.sum_targets_mib;
                let granules = (p.vms.len() as u64) * (GRANULE_MIB + PolicyConfig::default().min_step_mib);
                prop_assert!(slack <= granules, "slack {slack}: {p:?}");
            }
        }

        #[test]
        fn more_weight_never_means_less_memory(
            others in arb_vms(), twin in arb_vm(100), w1 in 1u32..=10_000, w2 in 1u32..=10_000,
            budget in 0u64..20_000
        ) {
            let (lo, hi) = (w1.min(w2), w1.max(w2));
            let mut a = twin.clone();
            a.name = "twin-lo".into();
            a.weight = lo;
            let mut b = twin;
            b.name = "twin-hi".into();
            b.weight = hi;
            let mut vms = others;
            vms.push(a);
            vms.push(b);
            let p = plan(&PolicyConfig::default(), Some(budget), &vms).unwrap();
            prop_assert!(target(&p, "twin-hi") >= target(&p, "twin-lo"), "{p:?}");
        }

        #[test]
        fn applying_the_plan_and_planning_again_changes_nothing(
            vms in arb_vms(), budget in proptest::option::of(0u64..20_000)
        ) {
            let cfg = PolicyConfig::default();
            let first = plan(&cfg, budget, &vms).unwrap();
            // The same inputs give the same plan.
            prop_assert_eq!(&plan(&cfg, budget, &vms).unwrap(), &first);
            let after = follow(&vms, &first);
            let second = plan(&cfg, budget, &after).unwrap();
            for (x, y) in first.vms.iter().zip(&second.vms) {
                prop_assert!(!y.changed, "{y:?} after {x:?}");
                prop_assert_eq!(x.target_mib, y.target_mib);
            }
        }
    }
}
