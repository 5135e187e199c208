//! The guest agent's reports, read from the VM's virtio-serial port socket.
//!
//! The agent (crate `ppn-guest-agent`) writes framed reports to the port
//! `org.ppnfabric.agent.0`; QEMU exposes the port as the unix socket `agent.sock` in the VM's
//! directory (one client at a time; while no client is connected QEMU drops what the guest
//! writes, so counters can jump but never go back within one agent run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ppn_guest_agent::report::{Decoder, Report, ReportError};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// Agent stream errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent socket {path}: read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent socket {path} closed (QEMU exited?)")]
    Closed { path: PathBuf },
    #[error("agent socket {path}: {what} not seen within {after:?} (last report: {last:?})")]
    Timeout { path: PathBuf, what: String, after: Duration, last: Option<Report> },
}

/// A report with the host instant it was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub report: Report,
    pub at: Instant,
}

/// A connection to a VM's agent socket yielding decoded reports.
#[derive(Debug)]
pub struct AgentStream {
    path: PathBuf,
    stream: UnixStream,
    decoder: Decoder,
    last: Option<Report>,
    errors: u64,
    skipped_bytes: u64,
    last_error: Option<ReportError>,
}

impl AgentStream {
    /// Connect to the agent socket (retrying until `timeout` while QEMU creates it).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(source) if Instant::now() >= deadline => {
                    return Err(AgentError::Connect { path: path.to_path_buf(), source });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            stream,
            decoder: Decoder::new(),
            last: None,
            errors: 0,
            skipped_bytes: 0,
            last_error: None,
        })
    }

    /// The last report decoded.
    pub fn last(&self) -> Option<Report> {
        self.last
    }

    /// Decoder errors so far: how many, how many bytes were skipped between frames, and the
    /// last error.
    pub fn errors(&self) -> (u64, u64, Option<&ReportError>) {
        (self.errors, self.skipped_bytes, self.last_error.as_ref())
    }

    /// The next valid report, waiting at most `timeout`. Invalid stretches are counted and
    /// skipped (see [`AgentStream::errors`]).
    pub async fn next_report(&mut self, timeout: Duration) -> Result<Received, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            while let Some(r) = self.decoder.next_report() {
                match r {
                    Ok(report) => {
                        self.last = Some(report);
                        return Ok(Received { report, at: Instant::now() });
                    }
                    Err(e) => {
                        self.errors += 1;
                        if let ReportError::Skipped { bytes } = e {
                            self.skipped_bytes += bytes as u64;
                        }
                        self.last_error = Some(e);
                    }
                }
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(AgentError::Timeout {
                        path: self.path.clone(),
                        what: "a report".into(),
                        after: timeout,
                        last: self.last,
                    });
                }
                Ok(Err(source)) => return Err(AgentError::Read { path: self.path.clone(), source }),
                Ok(Ok(0)) => return Err(AgentError::Closed { path: self.path.clone() }),
                Ok(Ok(n)) => n,
            };
            self.decoder.push(&buf[..n]);
        }
    }

    /// Read reports until `pred` holds for one, at most `timeout` in all.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Report) -> bool,
    ) -> Result<Received, AgentError> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.next_report(left).await {
                Ok(r) if pred(&r.report) => return Ok(r),
                Ok(_) => {}
                Err(AgentError::Timeout { last, .. }) => {
                    return Err(AgentError::Timeout {
                        path: self.path.clone(),
                        what: what.to_string(),
                        after: timeout,
                        last,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait for a report with `MemTotal >= kib`.
    pub async fn wait_mem_total_at_least(&mut self, kib: u64, timeout: Duration) -> Result<Received, AgentError> {
        self.wait_until(&format!("MemTotal >= {kib} KiB"), timeout, |r| r.mem_total_kib >= kib).await
    }

    /// Wait for a report with `MemTotal <= kib`.
    pub async fn wait_mem_total_at_most(&mut self, kib: u64, timeout: Duration) -> Result<Received, AgentError> {
        self.wait_until(&format!("MemTotal <= {kib} KiB"), timeout, |r| r.mem_total_kib <= kib).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn report(counter: u64, total: u64) -> Report {
        Report { counter, monotonic_ns: counter * 1_000_000, mem_total_kib: total, mem_available_kib: total / 2 }
    }

    // The socket side is QEMU's in production; here a plain unix listener stands in for the
    // transport only (the frames are the agent crate's real encoding).
    #[tokio::test]
    async fn decodes_split_and_garbled_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let writer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut bytes = Vec::new();
            bytes.extend_from_slice(b"garbage");
            bytes.extend_from_slice(&report(1, 200_000).encode());
            bytes.extend_from_slice(&report(2, 300_000).encode());
            bytes.extend_from_slice(&report(3, 700_000).encode());
            for chunk in bytes.chunks(5) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            s
        });
        let mut a = AgentStream::connect(&path, Duration::from_secs(2)).await.unwrap();
        let first = a.next_report(Duration::from_secs(2)).await.unwrap();
        assert_eq!(first.report, report(1, 200_000));
        assert_eq!(a.errors().1, 7, "the 7 garbage bytes are skipped and counted");
        let big = a.wait_mem_total_at_least(600_000, Duration::from_secs(2)).await.unwrap();
        assert_eq!(big.report.counter, 3);
        assert!(big.at >= first.at);
        let s = writer.await.unwrap();
        drop(s);
        assert!(matches!(a.next_report(Duration::from_secs(2)).await, Err(AgentError::Closed { .. })));
    }

    #[tokio::test]
    async fn times_out_with_last_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _keep = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&report(7, 100).encode()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut a = AgentStream::connect(&path, Duration::from_secs(2)).await.unwrap();
        let err = a.wait_mem_total_at_least(1_000, Duration::from_millis(300)).await.unwrap_err();
        match err {
            AgentError::Timeout { last, what, .. } => {
                assert_eq!(last, Some(report(7, 100)));
                assert!(what.contains("1000"), "{what}");
            }
            other => panic!("expected timeout, got {other}"),
        }
    }
}
