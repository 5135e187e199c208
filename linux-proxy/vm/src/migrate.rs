//! Live migration primitives over QMP.
//!
//! Destination: [`VmManager::start_incoming`] starts QEMU from the same spec with
//! `-incoming defer` (state `inmigrate`), then [`VmManager::migrate_incoming`] listens on a URI
//! (`tcp:127.0.0.1:PORT`; later the local end of the WireGuard tunnel). Source:
//! [`VmManager::set_migration_params`] (downtime limit, bandwidth), [`VmManager::migrate_start`],
//! [`VmManager::migration_progress`] / [`VmManager::wait_migration`], [`VmManager::migrate_cancel`].
//! When the migration completes the destination runs by itself and the source stays in
//! `postmigrate` until it is stopped.
//!
//! `query-migrate` is decoded leniently into [`MigrationProgress`]: its `ram` statistics gained
//! and renamed fields between QEMU versions, so `qapi`'s newer typed struct is not used for it.

use std::time::{Duration, Instant};

use qapi::qmp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manager::{ManagerError, Started, VmManager};
use crate::qmp::QmpError;
use crate::spec::LaunchMode;

/// Migration errors; each names the VM.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("VM {name}: {source}")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error("VM {name}: migration {status}: {error}")]
    Failed { name: String, status: String, error: String },
    #[error("VM {name}: migration not complete after {after:?} (last: {last:?})")]
    Timeout { name: String, after: Duration, last: Box<MigrationProgress> },
    #[error("VM {name} is in state {state}, expected {expected}")]
    WrongState { name: String, state: String, expected: &'static str },
}

fn qmp_err(name: &str) -> impl FnOnce(QmpError) -> MigrateError + '_ {
    move |source| MigrateError::Qmp { name: name.into(), source }
}

/// Source-side parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationParams {
    /// `downtime-limit`: the longest stop-and-copy phase QEMU aims for, ms.
    pub downtime_limit_ms: u64,
    /// `max-bandwidth`, bytes per second.
    pub max_bandwidth: u64,
}

impl Default for MigrationParams {
    fn default() -> Self {
        Self { downtime_limit_ms: 300, max_bandwidth: 1 << 30 }
    }
}

/// `query-migrate`, as far as the fabric uses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelling`, `cancelled`, ...
    pub status: String,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub mbps: f64,
    pub dirty_sync_count: u64,
    pub expected_downtime_ms: Option<u64>,
    /// Set once completed.
    pub downtime_ms: Option<u64>,
    pub total_time_ms: Option<u64>,
    pub setup_time_ms: Option<u64>,
    pub error: Option<String>,
    /// When the source stopped the guest for the switch-over: QEMU's `STOP` event timestamp,
    /// Unix µs (not part of `query-migrate`; set by whoever watched the source's events).
    #[serde(default)]
    pub stopped_unix_us: Option<u64>,
}

/// The timestamp (Unix µs) of the last `name` event already received on `rx`.
pub fn last_event_at(rx: &mut tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>, name: &str) -> Option<u64> {
    let mut at = None;
    loop {
        match rx.try_recv() {
            Ok(e) if e.name == name => at = Some(e.timestamp_us),
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return at,
        }
    }
}

/// The guest's pause across a migration, ms: from the source's `STOP` to the destination's
/// `RESUME` (both QEMU event timestamps, so both hosts' wall clocks: exact on one host, off by
/// their skew across hosts). `None` when either is unknown or they are out of order.
pub fn pause_ms(stopped_unix_us: Option<u64>, resumed_unix_us: Option<u64>) -> Option<f64> {
    let (s, r) = (stopped_unix_us?, resumed_unix_us?);
    (r >= s).then(|| (r - s) as f64 / 1e3)
}

/// On the destination `name`, after the stream ended: polls `c` (its monitor) until the guest
/// runs (`cont` if QEMU loaded it paused) and returns when the guest resumed (`RESUME`, Unix µs)
/// if `rx` (subscribed on `c` before the stream ended) saw it. Errors when QEMU stops answering
/// or `timeout` passes.
pub async fn wait_resumed(
    c: &crate::qmp::QmpClient,
    rx: &mut tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>,
    name: &str,
    timeout: Duration,
) -> Result<Option<u64>, MigrateError> {
    let t0 = Instant::now();
    loop {
        let s = c.query_status().await.map_err(qmp_err(name))?;
        match s.status {
            qmp::RunState::running => return Ok(last_event_at(rx, "RESUME")),
            qmp::RunState::paused => {
                c.execute(qmp::cont {}).await.map_err(qmp_err(name))?;
            }
            _ => {}
        }
        if t0.elapsed() > timeout {
            return Err(MigrateError::WrongState {
                name: name.into(),
                state: format!("{:?} {timeout:?} after the stream ended", s.status),
                expected: "running",
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl MigrationProgress {
    /// Decode a `query-migrate` reply.
    pub fn from_value(v: &Value) -> Self {
        let u = |o: Option<&Value>, k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_u64);
        let top = Some(v);
        let ram = v.get("ram");
        MigrationProgress {
            status: v.get("status").and_then(Value::as_str).unwrap_or("none").to_string(),
            transferred_bytes: u(ram, "transferred").unwrap_or(0),
            remaining_bytes: u(ram, "remaining").unwrap_or(0),
            total_bytes: u(ram, "total").unwrap_or(0),
            mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64).unwrap_or(0.0),
            dirty_sync_count: u(ram, "dirty-sync-count").unwrap_or(0),
            expected_downtime_ms: u(top, "expected-downtime"),
            downtime_ms: u(top, "downtime"),
            total_time_ms: u(top, "total-time"),
            setup_time_ms: u(top, "setup-time"),
            error: v.get("error-desc").and_then(Value::as_str).map(str::to_string),
            stopped_unix_us: None,
        }
    }

    /// Whether the migration has ended (completed, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

impl VmManager {
    /// Start a (created) VM as a migration destination: `-incoming defer`; it waits in state
    /// `inmigrate` for [`VmManager::migrate_incoming`].
    pub async fn start_incoming(&self, name: &str) -> Result<Started, MigrateError> {
        Ok(self.start_mode(name, &LaunchMode::incoming_defer()).await?)
    }

    /// Listen for the migration stream on `uri` (e.g. `tcp:127.0.0.1:PORT`).
    pub async fn migrate_incoming(&self, name: &str, uri: &str) -> Result<(), MigrateError> {
        let c = self.qmp(name).await?;
        let status = c.query_status().await.map_err(qmp_err(name))?;
        if status.status != qmp::RunState::inmigrate {
            return Err(MigrateError::WrongState {
                name: name.into(),
                state: format!("{:?}", status.status),
                expected: "inmigrate (started with start_incoming)",
            });
        }
        c.execute(qmp::migrate_incoming { uri: Some(uri.into()), channels: None, exit_on_error: None })
            .await
            .map_err(qmp_err(name))?;
        Ok(())
    }

    /// Set the source's downtime limit and bandwidth.
    pub async fn set_migration_params(&self, name: &str, params: MigrationParams) -> Result<(), MigrateError> {
        let c = self.qmp(name).await?;
        c.execute(qmp::migrate_set_parameters(qmp::MigrateSetParameters {
            downtime_limit: Some(params.downtime_limit_ms),
            max_bandwidth: Some(params.max_bandwidth),
            ..Default::default()
        }))
        .await
        .map_err(qmp_err(name))?;
        Ok(())
    }

    /// Start migrating to `uri`; returns at once (see [`VmManager::wait_migration`]).
    pub async fn migrate_start(&self, name: &str, uri: &str) -> Result<(), MigrateError> {
        let c = self.qmp(name).await?;
        c.execute(qmp::migrate { uri: Some(uri.into()), channels: None, detach: None, resume: None })
            .await
            .map_err(qmp_err(name))?;
        Ok(())
    }

    /// `query-migrate` on the source.
    pub async fn migration_progress(&self, name: &str) -> Result<MigrationProgress, MigrateError> {
        let c = self.qmp(name).await?;
        let v = c.execute_value(qmp::query_migrate {}).await.map_err(qmp_err(name))?;
        Ok(MigrationProgress::from_value(&v))
    }

    /// `migrate_cancel` on the source (the guest keeps running there).
    pub async fn migrate_cancel(&self, name: &str) -> Result<(), MigrateError> {
        let c = self.qmp(name).await?;
        c.execute(qmp::migrate_cancel {}).await.map_err(qmp_err(name))?;
        Ok(())
    }

    /// Poll `query-migrate` every `interval` until the migration finishes, calling `progress`
    /// with each sample. `Ok` only for `completed`.
    pub async fn wait_migration(
        &self,
        name: &str,
        timeout: Duration,
        interval: Duration,
        mut progress: impl FnMut(&MigrationProgress),
    ) -> Result<MigrationProgress, MigrateError> {
        let c = self.qmp(name).await?;
        let mut events = c.subscribe();
        let t0 = Instant::now();
        loop {
            let v = c.execute_value(qmp::query_migrate {}).await.map_err(qmp_err(name))?;
            let mut p = MigrationProgress::from_value(&v);
            progress(&p);
            match p.status.as_str() {
                "completed" => {
                    p.stopped_unix_us = last_event_at(&mut events, "STOP");
                    return Ok(p);
                }
                "failed" | "cancelled" => {
                    return Err(MigrateError::Failed {
                        name: name.into(),
                        status: p.status.clone(),
                        error: p.error.clone().unwrap_or_else(|| "no error given".into()),
                    });
                }
                _ => {}
            }
            if t0.elapsed() > timeout {
                return Err(MigrateError::Timeout { name: name.into(), after: timeout, last: Box::new(p) });
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_is_resume_minus_stop_when_both_are_known_and_in_order() {
        assert_eq!(pause_ms(Some(1_000_000), Some(1_012_500)), Some(12.5));
        assert_eq!(pause_ms(Some(5), Some(5)), Some(0.0));
        assert_eq!(pause_ms(None, Some(5)), None);
        assert_eq!(pause_ms(Some(5), None), None);
        assert_eq!(pause_ms(Some(6), Some(5)), None, "a resume before the stop is a clock skew, not a pause");
    }

    #[test]
    fn progress_from_qemu_7_2_reply() {
        // A completed query-migrate reply as QEMU 7.2 sends it (trimmed).
        let v: Value = serde_json::from_str(
            r#"{"expected-downtime": 300, "status": "completed", "setup-time": 3,
                "total-time": 812, "downtime": 8,
                "ram": {"total": 2432696320, "remaining": 0, "transferred": 61234567,
                        "mbps": 612.5, "dirty-sync-count": 4, "skipped": 0}}"#,
        )
        .unwrap();
        let p = MigrationProgress::from_value(&v);
        assert_eq!(p.status, "completed");
        assert!(p.is_finished());
        assert_eq!(p.downtime_ms, Some(8));
        assert_eq!(p.total_time_ms, Some(812));
        assert_eq!(p.transferred_bytes, 61_234_567);
        assert_eq!(p.dirty_sync_count, 4);
        assert!((p.mbps - 612.5).abs() < 1e-9);
        // Before any migration QEMU answers {}.
        let none = MigrationProgress::from_value(&serde_json::json!({}));
        assert_eq!(none.status, "none");
        assert!(!none.is_finished());
        let failed =
            MigrationProgress::from_value(&serde_json::json!({"status": "failed", "error-desc": "Connection refused"}));
        assert_eq!(failed.error.as_deref(), Some("Connection refused"));
    }

    #[test]
    fn set_parameters_encoding() {
        let cmd = qmp::migrate_set_parameters(qmp::MigrateSetParameters {
            downtime_limit: Some(300),
            max_bandwidth: Some(1 << 30),
            ..Default::default()
        });
        let v = serde_json::to_value(qapi::Execute::<_, u64>::new(cmd, Some(1))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"execute": "migrate-set-parameters",
                "arguments": {"downtime-limit": 300, "max-bandwidth": 1073741824}, "id": 1})
        );
    }
}
