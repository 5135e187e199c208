//! The node's balloon controller: every second it gathers, for each live VM, the memory weight
//! (the spec's, or the operator's override), the ceiling (base + plugged, from QMP), the balloon
//! actual (`query-balloon`) and the guest agent's latest MemTotal and MemAvailable, runs the
//! policy of [`ppn_vm::balloon`] against the node's budget, and sends the targets that changed
//! (`balloon`). Control op `node-balloon` (see [`Balloon::request`]) shows the status and sets
//! the budget or a weight; `ppn node balloon` prints it. docs/balloon.md has the policy.

use crate::vms::VmPlane;
use ppn_vm::balloon::{self, GuestMem, PolicyConfig, Pressure, VmInput};
use ppn_vm::manager::{ManagerError, PidStatus, pid_status};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the controller runs.
pub const PERIOD: Duration = Duration::from_secs(1);
/// A guest report older than this counts as none (the VM is held where it is).
pub const STALE_REPORT: Duration = Duration::from_secs(3);

/// Errors of the controller and its control op.
#[derive(Debug, thiserror::Error)]
pub enum BalloonCtlError {
    #[error("node-balloon: {0}")]
    Request(String),
    #[error(transparent)]
    Policy(#[from] balloon::BalloonError),
    #[error("node-balloon: {0}")]
    Vm(#[from] ManagerError),
}

/// The last target change the controller made for a VM.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub from_mib: u64,
    pub to_mib: u64,
    pub unix_ms: u64,
    pub reason: String,
}

/// One VM in the status.
#[derive(Debug, Clone, Serialize)]
pub struct VmBalloon {
    pub name: String,
    pub weight: u32,
    /// "spec" or "override" (set with `node-balloon`, kept until ppn-node restarts).
    pub weight_source: &'static str,
    pub ceiling_mib: u64,
    pub used_mib: u64,
    pub floor_mib: u64,
    pub want_mib: u64,
    pub target_mib: u64,
    pub actual_mib: Option<u64>,
    pub mem_total_mib: Option<u64>,
    pub mem_available_mib: Option<u64>,
    pub available_pct: Option<u64>,
    pub pressure: Pressure,
    pub reason: String,
    pub last_change: Option<Change>,
    pub last_error: Option<String>,
}

/// What `node-balloon` answers.
#[derive(Debug, Clone, Serialize)]
pub struct BalloonStatus {
    pub budget_mib: u64,
    /// "operator" or "sum of ceilings" (the default: no overcommit).
    pub budget_source: &'static str,
    pub sum_ceilings_mib: u64,
    pub sum_floors_mib: u64,
    pub sum_targets_mib: u64,
    /// Floors beyond the budget (they win); 0 when they fit.
    pub overcommit_mib: u64,
    pub policy: PolicyConfig,
    pub vms: Vec<VmBalloon>,
    /// Controller runs, targets sent, failed QMP calls.
    pub ticks: u64,
    pub changes: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// How long the last run took, and when it ended.
    pub last_tick_ms: f64,
    pub updated_unix_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    budget: Option<u64>,
    weights: BTreeMap<String, u32>,
    /// VM -> (QEMU pid, the target last sent to it). A new pid forgets the target.
    targets: BTreeMap<String, (u32, u64)>,
    changes: BTreeMap<String, Change>,
    /// The last run's failures.
    errors_by_vm: BTreeMap<String, String>,
    ticks: u64,
    sent: u64,
    errors: u64,
    last_error: Option<String>,
    status: Option<BalloonStatus>,
}

/// The balloon controller of a node.
pub struct Balloon {
    vms: Arc<VmPlane>,
    policy: PolicyConfig,
    state: Mutex<State>,
    /// One run at a time (the periodic one, or one asked for by the control op).
    run: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Balloon {
    /// Starts the controller (every [`PERIOD`]).
    pub fn spawn(vms: Arc<VmPlane>) -> Arc<Self> {
        let b = Arc::new(Self {
            vms,
            policy: PolicyConfig::default(),
            state: Mutex::default(),
            run: tokio::sync::Mutex::new(()),
        });
        let c = Arc::clone(&b);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                c.tick().await;
            }
        });
        b
    }

    /// Sets the node's budget (MiB of guest memory in total); `None`: the sum of the ceilings.
    pub fn set_budget(&self, mib: Option<u64>) {
        lock(&self.state).budget = mib;
    }

    /// Overrides a VM's memory weight for the controller.
    pub fn set_weight(&self, vm: &str, weight: u32) -> Result<(), BalloonCtlError> {
        if !(1..=balloon::MAX_WEIGHT).contains(&weight) {
            return Err(BalloonCtlError::Request(format!("memory weight {weight} is not in 1..=10000")));
        }
        self.vms.manager.spec(vm)?;
        lock(&self.state).weights.insert(vm.to_owned(), weight);
        Ok(())
    }

    /// The status of the last run (`None` before the first).
    pub fn status(&self) -> Option<BalloonStatus> {
        lock(&self.state).status.clone()
    }

    /// `{"op":"node-balloon"[,"budget_mib":N|null][,"weight":{"vm":NAME,"memory":W}]}`: applies
    /// the settings given, runs the controller once at once when something was set, and
    /// answers the status.
    pub async fn request(&self, req: &serde_json::Value) -> Result<serde_json::Value, BalloonCtlError> {
        let bad = |s: &str| BalloonCtlError::Request(s.to_owned());
        let mut set = false;
        if let Some(b) = req.get("budget_mib") {
            let mib = match b {
                serde_json::Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| bad("\"budget_mib\": want MiB, or null for the default"))?),
            };
            self.set_budget(mib);
            set = true;
        }
        if let Some(w) = req.get("weight") {
            let vm = w["vm"].as_str().ok_or_else(|| bad("\"weight\": want {\"vm\": NAME, \"memory\": W}"))?;
            let weight = w["memory"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| bad("\"weight\": \"memory\": want 1..=10000"))?;
            self.set_weight(vm, weight)?;
            set = true;
        }
        if set || self.status().is_none() {
            self.tick().await;
        }
        serde_json::to_value(self.status()).map_err(|e| BalloonCtlError::Request(e.to_string()))
    }

    /// One run: gather, plan, apply, record.
    pub async fn tick(&self) {
        let _one = self.run.lock().await;
        let t0 = Instant::now();
        let manager = &self.vms.manager;
        let (budget, weights) = {
            let s = lock(&self.state);
            (s.budget, s.weights.clone())
        };
        let mut inputs = Vec::new();
        let mut pids = BTreeMap::new();
        let mut extra: BTreeMap<String, (&'static str, Option<GuestMem>)> = BTreeMap::new();
        let mut errors: Vec<(String, String)> = Vec::new();
        for name in manager.names().unwrap_or_default() {
            let Ok(paths) = manager.paths(&name) else { continue };
            let PidStatus::Live(pid) = pid_status(&paths) else { continue };
            let Ok(spec) = manager.spec(&name) else { continue };
            let mem = match manager.memory(&name).await {
                Ok(m) => m,
                Err(ManagerError::NotRunning(_)) => continue,
                Err(e) => {
                    errors.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            let (weight, source) = match weights.get(&name) {
                Some(&w) => (w, "override"),
                None => (spec.weights.memory, "spec"),
            };
            let guest = self
                .vms
                .agent(&name)
                .filter(|v| v.at.is_some_and(|at| at.elapsed() < STALE_REPORT))
                .map(|v| GuestMem { mem_total_kib: v.mem_total_kib, mem_available_kib: v.mem_available_kib });
            let target = lock(&self.state).targets.get(&name).filter(|(p, _)| *p == pid).map(|(_, t)| *t);
            pids.insert(name.clone(), pid);
            extra.insert(name.clone(), (source, guest));
            inputs.push(VmInput {
                name,
                weight,
                ceiling_mib: mem.base_mib + mem.plugged_mib,
                target_mib: target,
                actual_mib: mem.balloon_actual_mib,
                guest,
            });
        }
        let plan = match balloon::plan(&self.policy, budget, &inputs) {
            Ok(p) => p,
            Err(e) => {
                let mut s = lock(&self.state);
                s.errors += 1;
                s.last_error = Some(e.to_string());
                return;
            }
        };
        let mut sent = Vec::new();
        for p in plan.vms.iter().filter(|p| p.changed) {
            match manager.set_balloon(&p.name, p.target_mib).await {
                Ok(()) => sent.push(p.name.clone()),
                Err(e) => errors.push((p.name.clone(), e.to_string())),
            }
        }
        let mut s = lock(&self.state);
        s.ticks += 1;
        s.targets.retain(|name, _| pids.contains_key(name));
        s.changes.retain(|name, _| pids.contains_key(name));
        s.errors_by_vm.clear();
        for p in &plan.vms {
            if sent.contains(&p.name) {
                s.sent += 1;
                s.changes.insert(
                    p.name.clone(),
                    Change {
                        from_mib: p.current_mib,
                        to_mib: p.target_mib,
                        unix_ms: now_ms(),
                        reason: p.reason.clone(),
                    },
                );
                s.targets.insert(p.name.clone(), (pids[&p.name], p.target_mib));
            }
        }
        for (name, e) in errors {
            s.errors += 1;
            s.last_error = Some(format!("{name}: {e}"));
            s.errors_by_vm.insert(name, e);
        }
        let vms = plan
            .vms
            .iter()
            .zip(&inputs)
            .map(|(p, i)| {
                let (source, guest) = extra[&p.name];
                VmBalloon {
                    name: p.name.clone(),
                    weight: p.weight,
                    weight_source: source,
                    ceiling_mib: p.ceiling_mib,
                    used_mib: p.used_mib,
                    floor_mib: p.floor_mib,
                    want_mib: p.want_mib,
                    target_mib: p.target_mib,
                    actual_mib: i.actual_mib,
                    mem_total_mib: guest.map(|g| g.mem_total_kib / 1024),
                    mem_available_mib: guest.map(|g| g.mem_available_kib / 1024),
                    available_pct: guest.and_then(|g| (g.mem_available_kib * 100).checked_div(g.mem_total_kib)),
                    pressure: p.pressure,
                    reason: p.reason.clone(),
                    last_change: s.changes.get(&p.name).cloned(),
                    last_error: s.errors_by_vm.get(&p.name).cloned(),
                }
            })
            .collect();
        let status = BalloonStatus {
            budget_mib: plan.budget_mib,
            budget_source: if budget.is_some() { "operator" } else { "sum of ceilings" },
            sum_ceilings_mib: plan.sum_ceilings_mib,
            sum_floors_mib: plan.sum_floors_mib,
            sum_targets_mib: plan.sum_targets_mib,
            overcommit_mib: plan.overcommit_mib,
            policy: self.policy,
            vms,
            ticks: s.ticks,
            changes: s.sent,
            errors: s.errors,
            last_error: s.last_error.clone(),
            last_tick_ms: t0.elapsed().as_secs_f64() * 1e3,
            updated_unix_ms: now_ms(),
        };
        s.status = Some(status);
    }
}
