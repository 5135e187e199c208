//! `ppn sdf check` on the real node image SDF and on a broken one.

use std::path::PathBuf;
use std::process::{Command, Output};

fn real_sdf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdf/qemu_virt_aarch64.system")
}

fn ppn_sdf_check(file: &std::path::Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ppn"));
    cmd.args(["sdf", "check"]).arg(file);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run ppn")
}

#[test]
fn the_real_sdf_passes_with_a_one_line_summary() {
    let out = ppn_sdf_check(&real_sdf(), false);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("qemu_virt_aarch64.system: ok: 4 protection domains, 17 memory regions"), "{text}");
    assert!(text.contains("5 channels, 4 interrupts, 4 setvars match ppn-layout"), "{text}");
    assert!(out.stderr.is_empty());

    let out = ppn_sdf_check(&real_sdf(), true);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["board"], "qemu_virt_aarch64");
    assert_eq!(v["summary"]["pds"], 4);
    assert_eq!(v["summary"]["channels"], 5);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_broken_sdf_fails_listing_every_error_with_its_line() {
    let real = std::fs::read_to_string(real_sdf()).unwrap();
    // Link maps the ledger's secret state, and the channel to the ledger is gone.
    let link_map = r#"<map mr="link_console_dma" vaddr="0x4000_0000" perms="rw" cached="true" />"#;
    let channel_start = real.find("    <channel>").expect("a channel");
    let channel_end = real.find("</channel>").expect("a channel") + "</channel>\n".len();
    let broken = format!("{}{}", &real[..channel_start], &real[channel_end..]).replacen(
        link_map,
        &format!("{link_map}\n        <map mr=\"ledger_state\" vaddr=\"0x2000_0000\" perms=\"r\" />"),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.system");
    std::fs::write(&file, &broken).unwrap();
    let line = |needle: &str| 1 + broken[..broken.find(needle).unwrap()].matches('\n').count();
    let secret_line = line(r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="r" />"#);
    let system_line = line("<system>");

    let out = ppn_sdf_check(&file, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    let name = file.display();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{name}:{system_line}: <system> lacks the channel between link (id 1) and ledger (id 0)"
        )),
        "{err}"
    );
    assert_eq!(
        lines[1],
        format!(
            "{name}:{secret_line}: <map mr=\"ledger_state\"> maps secret region ledger_state into link; it may only be mapped into ledger"
        )
    );
    assert!(lines[2].starts_with(&format!("{name}: 2 errors")), "{err}");

    let out = ppn_sdf_check(&file, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    let kinds: Vec<(&str, u64)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("missing_channel", system_line as u64), ("secret_shared", secret_line as u64)]);
    assert_eq!(v["errors"][1]["element"], "<map mr=\"ledger_state\">");
}

#[test]
fn an_unreadable_file_is_named_and_fails() {
    let out = ppn_sdf_check(std::path::Path::new("/nonexistent/x.system"), false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/x.system"), "{err}");
}
