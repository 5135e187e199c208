//! What the VM benchmarks (`bench_plug`, `bench_migrate`) share: the guest spec from the cached
//! image, and a 2-node local fleet in a temporary directory, measured on a thread with its own
//! runtime, stopped on every path and kept for its logs when the measurement failed.

use crate::print_json;
use ppn_guest_agent::image::{self, ImageOptions};
use ppn_node::fleet::{self, UpOptions};
use ppn_vm::VmSpec;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The spec of a bench guest: the cached guest image (built first if need be) in
/// `data_dir/ppn-guest`, with absolute paths (QEMU runs from elsewhere).
pub fn guest_spec(data_dir: &Path, name: &str, base_mib: u64, vmem_max_mib: u64) -> Result<VmSpec, String> {
    let img = image::ensure(&data_dir.join("ppn-guest"), &ImageOptions { agent: None, force: false, verbose: false })
        .map_err(|e| format!("guest image: {e}"))?;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok(VmSpec::new(name, base_mib, vmem_max_mib, abs(&img.kernel)?, abs(&img.initrd)?, img.cmdline.clone()))
}

/// Runs `measure(fleet_dir, up_options, scratch_dir)` on a thread of its own with a runtime of
/// `threads` workers, in a temporary directory (`prefix`); `measure` starts the 2-node fleet
/// (each TCB lending `lend_mib`) with `fleet::up`. The fleet is stopped afterwards; on a
/// failure the directory is kept and named in the error. Prints the result (one JSON line with
/// `json`, pretty JSON otherwise).
pub fn in_fleet<F, Fut>(prefix: &str, lend_mib: u32, threads: usize, json: bool, measure: F) -> Result<ExitCode, String>
where
    F: FnOnce(PathBuf, UpOptions, PathBuf) -> Fut + Send,
    Fut: Future<Output = Result<serde_json::Value, String>>,
{
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().join("fleet");
    let up = crate::fleet::up_options(2, lend_mib)?;
    let scratch = tmp.path().join("raw-vms");
    let result = std::thread::scope(|s| {
        let dir = dir.clone();
        s.spawn(move || -> Result<serde_json::Value, String> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .map_err(|e| format!("async runtime: {e}"))?;
            rt.block_on(measure(dir, up, scratch))
        })
        .join()
        .unwrap_or_else(|_| Err("the bench thread panicked".into()))
    });
    let stopped = if dir.join(fleet::FLEET_JSON).exists() { fleet::down(&dir, result.is_ok()) } else { Ok(0) };
    let value = match (result, stopped) {
        (Ok(v), Ok(_)) => v,
        (Ok(_), Err(e)) => return Err(format!("stopping the fleet in {}: {e}", tmp.keep().display())),
        (Err(e), _) => return Err(format!("{e} (logs kept in {})", tmp.keep().display())),
    };
    if json {
        println!("{value}");
    } else {
        print_json(&value)?;
    }
    Ok(ExitCode::SUCCESS)
}
