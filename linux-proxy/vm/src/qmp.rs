//! A small async QMP client over a unix socket.
//!
//! Commands are `qapi`'s typed commands (`qapi::qmp::*`): their names, argument encoding and
//! result types come from the crate. The transport is our own, deliberately lenient reader:
//! `qapi` 0.15 is generated from a newer QEMU schema than the QEMU 7.2 we run, its event enum is
//! closed and its codec ends the whole stream on the first message it cannot decode (an event
//! unknown to its schema, or one whose fields changed). Here every event is kept as its raw name
//! and data ([`QmpEvent`]), with the typed `qapi::qmp::Event` alongside when it decodes.
//!
//! One [`QmpClient`] is one QMP connection; QEMU serves one client per monitor at a time, so a
//! second connection waits until the first closes (its greeting does not arrive: the connect
//! times out with [`QmpError::Greeting`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qapi::qmp;
use qapi::{Command, Execute};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

/// Default time a command may take before [`QmpError::Timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// QMP errors; each says which socket or command it concerns.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP greeting from {path}: {reason}")]
    Greeting { path: PathBuf, reason: String },
    #[error("QMP command {command}: no reply within {after:?}")]
    Timeout { command: &'static str, after: Duration },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: &'static str, class: String, desc: String },
    #[error("QMP command {command}: cannot decode reply {reply}: {source}")]
    Decode {
        command: &'static str,
        reply: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("QMP command {command}: cannot encode: {source}")]
    Encode {
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("QMP write of {command}: {source}")]
    Write {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed (QEMU exited or another client took over) while {doing}")]
    Closed { doing: String },
    #[error("timed out after {after:?} waiting for {what}")]
    WaitTimeout { what: String, after: Duration },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// The event name, e.g. `MEMORY_DEVICE_SIZE_CHANGE`.
    pub name: String,
    /// The event's `data` (`null` when absent).
    pub data: Value,
    /// QEMU's timestamp, microseconds since the epoch.
    pub timestamp_us: u64,
    /// The typed event when `qapi`'s schema decodes it.
    pub typed: Option<qmp::Event>,
}

type Reply = Result<Value, (String, String)>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One QMP connection: capabilities negotiated, a reader task dispatching replies and events.
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed_rx: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    version: (u64, u64, u64),
    timeout: Duration,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connect, read the greeting and leave capabilities negotiation mode, all within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QmpError::Connect { path: path.to_path_buf(), source }),
            Err(_) => {
                return Err(QmpError::Greeting {
                    path: path.to_path_buf(),
                    reason: format!("connect did not complete within {timeout:?}"),
                });
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = match tokio::time::timeout(timeout, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                return Err(QmpError::Greeting {
                    path: path.to_path_buf(),
                    reason: "connection closed before the greeting".into(),
                });
            }
            Ok(Err(e)) => return Err(QmpError::Greeting { path: path.to_path_buf(), reason: e.to_string() }),
            Err(_) => {
                return Err(QmpError::Greeting {
                    path: path.to_path_buf(),
                    reason: format!("no greeting within {timeout:?} (is another QMP client connected?)"),
                });
            }
        };
        let caps: qmp::QapiCapabilities = serde_json::from_str(&greeting).map_err(|e| QmpError::Greeting {
            path: path.to_path_buf(),
            reason: format!("not a QMP greeting ({e}): {greeting}"),
        })?;
        let v = &caps.QMP.version.qemu;
        let version = (v.major as u64, v.minor as u64, v.micro as u64);

        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed_rx) = watch::channel(false);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone(), closed_tx));
        let client = QmpClient {
            path: path.to_path_buf(),
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            closed_rx,
            reader,
            version,
            timeout,
        };
        client.execute_timeout(qmp::qmp_capabilities { enable: None }, timeout).await?;
        Ok(client)
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU's version from the greeting (major, minor, micro).
    pub fn qemu_version(&self) -> (u64, u64, u64) {
        self.version
    }

    /// Whether the connection has ended (QEMU exited or closed it).
    pub fn is_closed(&self) -> bool {
        *self.closed_rx.borrow()
    }

    /// Events from now on. Subscribe before issuing the command whose effect you wait for.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Execute a typed command with the connection's default timeout.
    pub async fn execute<C: Command>(&self, command: C) -> Result<C::Ok, QmpError> {
        self.execute_timeout(command, self.timeout).await
    }

    /// Execute a typed command, waiting at most `timeout` for the reply.
    pub async fn execute_timeout<C: Command>(&self, command: C, timeout: Duration) -> Result<C::Ok, QmpError> {
        let value = self.execute_raw(command, timeout).await?;
        serde_json::from_value(value.clone()).map_err(|source| QmpError::Decode {
            command: C::NAME,
            reply: value.to_string(),
            source,
        })
    }

    /// Execute a typed command but return the reply undecoded, for replies whose shape differs
    /// between QEMU versions (e.g. `query-migrate` statistics).
    pub async fn execute_value<C: Command>(&self, command: C) -> Result<Value, QmpError> {
        self.execute_raw(command, self.timeout).await
    }

    async fn execute_raw<C: Command>(&self, command: C, timeout: Duration) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed { doing: format!("sending {}", C::NAME) });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(&Execute::<C, u64>::new(command, Some(id)))
            .map_err(|source| QmpError::Encode { command: C::NAME, source })?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.is_closed() {
            // The reader may have ended (and cleared `pending`) just before the insert.
            lock(&self.pending).remove(&id);
            return Err(QmpError::Closed { doing: format!("sending {}", C::NAME) });
        }
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await?;
            w.flush().await
        };
        let result = tokio::time::timeout(timeout, async {
            sent.await.map_err(|source| QmpError::Write { command: C::NAME, source })?;
            rx.await.map_err(|_| QmpError::Closed { doing: format!("waiting for the reply to {}", C::NAME) })
        })
        .await;
        match result {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command { command: C::NAME, class, desc }),
            Ok(Err(e)) => {
                lock(&self.pending).remove(&id);
                Err(e)
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout { command: C::NAME, after: timeout })
            }
        }
    }

    /// Wait (at most `timeout`) for an event for which `pick` returns `Some`, from a receiver
    /// obtained with [`QmpClient::subscribe`] before the triggering command.
    pub async fn wait_event<T>(
        &self,
        rx: &mut broadcast::Receiver<QmpEvent>,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&QmpEvent) -> Option<T>,
    ) -> Result<T, QmpError> {
        let mut closed = self.closed_rx.clone();
        let fut = async {
            loop {
                tokio::select! {
                    biased;
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            if let Some(t) = pick(&ev) {
                                return Ok(t);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Err(QmpError::Closed { doing: format!("waiting for {what}") });
                        }
                    },
                    _ = closed.wait_for(|c| *c) => {
                        // Events already queued were delivered first (biased); none will follow.
                        return Err(QmpError::Closed { doing: format!("waiting for {what}") });
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(QmpError::WaitTimeout { what: what.to_string(), after: timeout }),
        }
    }

    /// Wait until the connection closes (QEMU exited), at most `timeout`.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<(), QmpError> {
        let mut closed = self.closed_rx.clone();
        match tokio::time::timeout(timeout, closed.wait_for(|c| *c)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(QmpError::WaitTimeout {
                what: format!("QMP connection {} to close", self.path.display()),
                after: timeout,
            }),
        }
    }

    // Typed conveniences used by the manager.

    /// `query-status`.
    pub async fn query_status(&self) -> Result<qmp::StatusInfo, QmpError> {
        self.execute(qmp::query_status {}).await
    }

    /// `qom-get` of an integer property (e.g. virtio-mem `size`).
    pub async fn qom_get_u64(&self, path: &str, property: &str) -> Result<u64, QmpError> {
        let v = self.execute(qmp::qom_get { path: path.into(), property: property.into() }).await?;
        v.as_u64().ok_or_else(|| QmpError::Command {
            command: "qom-get",
            class: "unexpected-type".into(),
            desc: format!("{path}.{property} is {v}, expected an unsigned integer"),
        })
    }

    /// `qom-set` of a property.
    pub async fn qom_set(&self, path: &str, property: &str, value: Value) -> Result<(), QmpError> {
        self.execute(qmp::qom_set { path: path.into(), property: property.into(), value }).await.map(|_| ())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue; // not JSON: ignore the line, keep the connection
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let ts = msg.get("timestamp");
            let secs = ts.and_then(|t| t.get("seconds")).and_then(Value::as_u64).unwrap_or(0);
            let micros = ts.and_then(|t| t.get("microseconds")).and_then(Value::as_u64).unwrap_or(0);
            let ev = QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp_us: secs * 1_000_000 + micros,
                typed: serde_json::from_value(msg.clone()).ok(),
            };
            let _ = events.send(ev);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err((
                err.get("class").and_then(Value::as_str).unwrap_or("unknown").to_string(),
                err.get("desc").and_then(Value::as_str).unwrap_or("").to_string(),
            ))
        } else {
            continue;
        };
        if let Some(tx) = lock(&pending).remove(&id) {
            let _ = tx.send(reply);
        }
    }
    lock(&pending).clear(); // wakes command waiters with Closed
    let _ = closed.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    // What a real QEMU cannot be made to send on demand: an event unknown to `qapi`'s schema,
    // an event whose fields differ from it, and a non-JSON line. A scripted peer sends them between
    // real-shaped replies; the connection must survive all three.
    #[tokio::test]
    async fn unknown_events_and_garbage_do_not_end_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \
                  \"package\": \"test\"}, \"capabilities\": [\"oob\"]}}\n",
            )
            .await
            .unwrap();
            let mut commands = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let id = v["id"].clone();
                let name = v["execute"].as_str().unwrap().to_string();
                commands.push(v.clone());
                if name == "query-status" {
                    w.write_all(
                        b"{\"event\": \"FUTURE_EVENT\", \"data\": {\"x\": 1}, \
                        \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n",
                    )
                    .await
                    .unwrap();
                    w.write_all(
                        b"{\"event\": \"MEMORY_DEVICE_SIZE_CHANGE\", \
                        \"data\": {\"id\": \"vmem0dev\", \"size\": 2097152}, \
                        \"timestamp\": {\"seconds\": 1, \"microseconds\": 3}}\n",
                    )
                    .await
                    .unwrap();
                    w.write_all(b"this is not json\n").await.unwrap();
                    let reply = serde_json::json!({"return": {"status": "running",
                        "singlestep": false, "running": true}, "id": id});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                } else if name == "qom-get" {
                    let reply = serde_json::json!({"error": {"class": "DeviceNotFound",
                        "desc": "Device 'x' not found"}, "id": id});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                } else {
                    let reply = serde_json::json!({"return": {}, "id": id});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
            }
            commands
        });
        let c = QmpClient::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(c.qemu_version(), (7, 2, 22));
        let mut rx = c.subscribe();
        let st = c.query_status().await.unwrap();
        assert!(st.running);
        let future = rx.recv().await.unwrap();
        assert_eq!(future.name, "FUTURE_EVENT");
        assert!(future.typed.is_none());
        assert_eq!(future.timestamp_us, 1_000_002);
        // A MEMORY_DEVICE_SIZE_CHANGE without the `qom-path` the schema requires (QEMU 7.2 does
        // send it; older ones did not): kept raw, not typed, and the stream goes on.
        let size = rx.recv().await.unwrap();
        assert_eq!(size.data["size"], 2_097_152);
        let err = c.qom_get_u64("x", "size").await.unwrap_err();
        assert!(err.to_string().contains("DeviceNotFound: Device 'x' not found"), "{err}");
        c.execute(qmp::cont {}).await.unwrap();
        drop(c);
        let commands = peer.await.unwrap();
        let names: Vec<&str> = commands.iter().map(|v| v["execute"].as_str().unwrap()).collect();
        assert_eq!(names, ["qmp_capabilities", "query-status", "qom-get", "cont"]);
        // Every command carried a distinct numeric id.
        let ids: Vec<u64> = commands.iter().map(|v| v["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }
}
