//! `ppn tcb ...`

use crate::{Conn, print_json};
use ppn_wire::service::{NodePublicKeys, NodeStatus, Platform, ServiceState};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the TCB's identity, uptime, counters and services.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Status { conn } => status(&conn).await.map(|()| ExitCode::SUCCESS),
    }
}

/// `ppn tcb status`: human text, or JSON with `--json`.
async fn status(conn: &Conn) -> Result<(), String> {
    let client = conn.connect().await?;
    let status = client.status().await.map_err(conn.context())?;
    let keys = client.public_keys().await.map_err(conn.context())?;
    if conn.json {
        print_json(&status_json(&status, &keys))
    } else {
        print!("{}", status_text(&conn.socket, &status, &keys));
        Ok(())
    }
}

fn platform_name(p: Platform) -> String {
    match p {
        Platform::Hosted => "hosted".into(),
        Platform::Sel4Microkit => "sel4-microkit".into(),
        Platform::Unknown(n) => format!("unknown({n})"),
    }
}

fn state_name(s: ServiceState) -> String {
    match s {
        ServiceState::Ready => "ready".into(),
        ServiceState::NotImplemented => "not implemented".into(),
        ServiceState::Unknown(n) => format!("unknown({n})"),
    }
}

fn status_json(s: &NodeStatus, k: &NodePublicKeys) -> serde_json::Value {
    let services: serde_json::Map<String, serde_json::Value> =
        s.services.iter().map(|x| (x.service().name().to_owned(), state_name(x.state).into())).collect();
    serde_json::json!({
        "node_id": s.node_id.to_string(),
        "platform": platform_name(s.platform),
        "tcb_version": s.tcb_version.as_str(),
        "uptime_ms": s.uptime_ms,
        "boot_count": s.boot_count,
        "requests_served": s.requests_served,
        "requests_failed": s.requests_failed,
        "services": services,
        "signing_key": format!("{:x}", k.signing_key),
        "attestation_key": k.attestation_key.map(|a| format!("{a:x}")),
    })
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        86400.. => format!("{}d {:02}h {:02}m", s / 86400, s / 3600 % 24, s / 60 % 60),
        _ => format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

fn status_text(socket: &Path, s: &NodeStatus, k: &NodePublicKeys) -> String {
    let mut out = String::new();
    let platform = match s.platform {
        Platform::Hosted => "hosted (a Linux process: development isolation only)".to_owned(),
        Platform::Sel4Microkit => "seL4 Microkit protection domains".to_owned(),
        p => platform_name(p),
    };
    let services: Vec<String> =
        s.services.iter().map(|x| format!("{} {}", x.service().name(), state_name(x.state))).collect();
    let _ = writeln!(out, "TCB at {}", socket.display());
    let _ = writeln!(out, "  node id      {}", s.node_id);
    let _ = writeln!(out, "  platform     {platform}");
    let _ = writeln!(out, "  version      {}", s.tcb_version);
    let _ = writeln!(out, "  uptime       {}", uptime(s.uptime_ms));
    let _ = writeln!(out, "  boot count   {}", s.boot_count);
    let _ = writeln!(out, "  requests     {} served, {} failed", s.requests_served, s.requests_failed);
    let _ = writeln!(out, "  services     {}", services.join(", "));
    let _ = writeln!(out, "  signing key  {:x}", k.signing_key);
    out
}

#[cfg(test)]
mod tests {
    use super::uptime;

    #[test]
    fn uptime_is_readable_at_every_scale() {
        assert_eq!(uptime(1_234), "1.234s");
        assert_eq!(uptime(61_000), "1m 01s");
        assert_eq!(uptime(3_601_000), "1h 00m 01s");
        assert_eq!(uptime(90_061_000), "1d 01h 01m");
    }
}
