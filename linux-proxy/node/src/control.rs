//! The control socket (`DIR/node.sock`, mode 0600): one JSON object per line each way.
//!
//! | request | answer |
//! | --- | --- |
//! | `{"op":"status"}` | `{"ok":true,"status":{...}}` ([`crate::node::NodeStatus`]) |
//! | `{"op":"hint","node":"<16 hex>","endpoint":"host:port"}` | `{"ok":true}` |
//! | `{"op":"vm-create","spec":{...}}` ([`ppn_vm::VmSpec`]) | `{"ok":true}` |
//! | `{"op":"vm-start"\|"vm-stop"\|"vm-destroy","name":N}` | `{"ok":true,...}` |
//! | `{"op":"vm-list"}` | `{"ok":true,"vms":[...]}` |
//! | `{"op":"vm-grow","name":N,"mib":M[,"from":"<16 hex>"][,"lease_secs":S]}` | `{"ok":true,"grown":{...}}` |
//! | `{"op":"vm-migrate","name":N,"to":"<16 hex>"[,"downtime_ms":D][,"max_bandwidth":B][,"timeout_s":T][,"encoding":"zstd" or "plain"]}` | `{"ok":true,"migration":{...}}` at once ([`crate::migration::MigrationStatus`]) |
//! | `{"op":"vm-evacuate-accept","name":N,"from":"<16 hex>"[,"secs":S]}` | `{"ok":true,"order":{...}}`: take VM N from that revoked node without a grant, once, within S seconds (default 300); the node stays in the mesh until then |
//! | `{"op":"vm-migrate-status","name":N}` | `{"ok":true,"migration":{...}}` |
//! | `{"op":"vm-agent","name":N}` | `{"ok":true,"agent":{"counter","mem_total_kib","at_unix_us"}}` (latest report, no QMP) |
//! | `{"op":"vm-attest","name":N,"nonce":"<hex, 8 to 64 bytes>"}` | `{"ok":true,"report":"<hex>"}` (a COSE_Sign1 EAT from the node's TCB; the VM must run from a sealed root) |
//! | `{"op":"lease-list"}` | `{"ok":true,"leases":{...}}` |
//! | `{"op":"lease-release","lease_id":L}` | `{"ok":true,"released":"..."}` |
//! | `{"op":"node-capacity"}` | `{"ok":true,"capacity":{"node_id","mem_mib","vcpus","reserved_mib"}}` (what the scheduler needs) |
//! | `{"op":"vm-pin","name":N,"pinned":true\|false}` | `{"ok":true,"placement":{"pinned","reason","at_unix_s"}}` |
//! | `{"op":"vm-placement","name":N,"placement":{...}}` | `{"ok":true,"placement":{...}}` (records why the VM runs here) |
//! | `{"op":"node-balloon"[,"budget_mib":N\|null][,"weight":{"vm":N,"memory":W}]}` | `{"ok":true,"balloon":{...}}` ([`crate::balloon::BalloonStatus`]) |
//!
//! Anything else gets `{"ok":false,"error":"..."}`; a line over 4 KiB closes the connection.
//! The socket is for the operator's tools on this machine; it grants nothing the TCB would not.

use crate::hints::parse_node_id;
use crate::node::Node;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Longest request line.
pub const MAX_LINE: usize = 4096;

/// Binds the control socket (replacing a stale one) and serves it.
pub fn serve(path: &Path, node: Arc<Node>) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read);
                let mut line = String::new();
                loop {
                    line.clear();
                    match (&mut lines).take(MAX_LINE as u64 + 1).read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if n > MAX_LINE => break,
                        Ok(_) => {}
                    }
                    let answer = handle(&node, line.trim()).await;
                    let mut out = answer.to_string();
                    out.push('\n');
                    if write.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

fn fail(why: impl std::fmt::Display) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": why.to_string() })
}

async fn handle(node: &Node, line: &str) -> serde_json::Value {
    let req: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return fail(format!("not JSON: {e}")),
    };
    match req["op"].as_str() {
        Some("status") => match node.status().await {
            Ok(s) => serde_json::json!({ "ok": true, "status": s }),
            Err(e) => fail(format!("TCB: {e}")),
        },
        Some("hint") => {
            let Some(id) = req["node"].as_str().and_then(parse_node_id) else {
                return fail("hint: want \"node\": 16 hex digits");
            };
            let Some(endpoint) = req["endpoint"].as_str().and_then(|e| e.parse().ok()) else {
                return fail("hint: want \"endpoint\": host:port");
            };
            match node.hint(id, endpoint) {
                Ok(()) => serde_json::json!({ "ok": true }),
                Err(e) => fail(e),
            }
        }
        Some(op) if op.starts_with("vm-") || op.starts_with("lease-") => match vm_op(node, op, &req).await {
            Ok(v) => v,
            Err(e) => fail(e),
        },
        Some("node-capacity") => serde_json::json!({ "ok": true, "capacity": node.capacity().await }),
        Some("node-balloon") => match node.balloon.request(&req).await {
            Ok(s) => serde_json::json!({ "ok": true, "balloon": s }),
            Err(e) => fail(e),
        },
        Some(other) => fail(format!("unknown op {other:?}")),
        None => fail("want {\"op\": ...}"),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn name(req: &serde_json::Value) -> Result<&str, String> {
    req["name"].as_str().ok_or_else(|| "want \"name\": a VM name".to_owned())
}

async fn vm_op(node: &Node, op: &str, req: &serde_json::Value) -> Result<serde_json::Value, String> {
    let vms = &node.vms;
    let ok = |k: &str, v: serde_json::Value| serde_json::json!({ "ok": true, k: v });
    Ok(match op {
        "vm-create" => {
            let spec: ppn_vm::VmSpec =
                serde_json::from_value(req["spec"].clone()).map_err(|e| format!("vm-create: spec: {e}"))?;
            let placement: Option<crate::vms::Placement> = match req.get("placement") {
                None | Some(serde_json::Value::Null) => None,
                Some(p) => Some(serde_json::from_value(p.clone()).map_err(|e| format!("vm-create: placement: {e}"))?),
            };
            vms.create(&spec)?;
            if let Some(p) = placement {
                vms.set_placement(&spec.name, &p)?;
            }
            serde_json::json!({ "ok": true })
        }
        "vm-pin" => {
            let pinned = req["pinned"].as_bool().ok_or("vm-pin: want \"pinned\": true or false")?;
            ok("placement", serde_json::to_value(vms.pin(name(req)?, pinned)?).map_err(|e| e.to_string())?)
        }
        "vm-placement" => {
            let p: crate::vms::Placement = serde_json::from_value(req["placement"].clone())
                .map_err(|e| format!("vm-placement: want \"placement\": {{pinned, reason, at_unix_s}}: {e}"))?;
            vms.set_placement(name(req)?, &p)?;
            ok("placement", serde_json::to_value(p).map_err(|e| e.to_string())?)
        }
        "vm-start" => ok("started", vms.start(name(req)?).await?),
        "vm-stop" => ok("stopped", vms.stop(name(req)?).await?.into()),
        "vm-destroy" => ok("destroyed", vms.destroy(name(req)?).await?.into()),
        "vm-list" => ok("vms", vms.list().await?),
        "vm-grow" => {
            let mib = req["mib"].as_u64().ok_or("vm-grow: want \"mib\": MiB to add")?;
            let from = match req["from"].as_str() {
                Some(s) => Some(parse_node_id(s).ok_or("vm-grow: \"from\" is not 16 hex digits")?),
                None => None,
            };
            let secs = req["lease_secs"].as_u64().unwrap_or(crate::vms::DEFAULT_LEASE_SECS);
            let grown = vms.grow(name(req)?, mib, from, secs).await?;
            ok("grown", serde_json::to_value(grown).map_err(|e| e.to_string())?)
        }
        "vm-migrate" | "vm-migrate-status" | "vm-agent" | "vm-evacuate-accept" => {
            return crate::migration::control(node, op, req).await;
        }
        "vm-attest" => {
            let nonce = req["nonce"].as_str().ok_or("vm-attest: want \"nonce\": hex")?;
            let nonce = unhex(nonce).ok_or("vm-attest: the nonce is not hex")?;
            let report = node.attest_vm(name(req)?, &nonce).await?;
            ok("report", report.iter().map(|b| format!("{b:02x}")).collect::<String>().into())
        }
        "lease-list" => ok("leases", vms.leases().await),
        "lease-release" => {
            let id = req["lease_id"].as_u64().ok_or("lease-release: want \"lease_id\"")?;
            ok("released", vms.give_back(id).await?.into())
        }
        other => return Err(format!("unknown op {other:?}")),
    })
}
