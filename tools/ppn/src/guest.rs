//! `ppn guest build`: the minimal guest the fabric's VMs boot (a Debian kernel, an initramfs of
//! busybox-static, the virtio modules and the in-guest agent), built once and cached in the
//! data directory. See docs/guest.md.

use crate::print_json;
use ppn_guest_agent::image::{self, ImageOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the guest image (or check the cached one) and print where it is.
    Build {
        /// The data directory; the image goes to DIR/ppn-guest (`target`, the default, is where
        /// the tests look too).
        #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
        data_dir: PathBuf,
        /// The agent binary to put in the initramfs (static x86_64). Default: $PPN_GUEST_AGENT,
        /// else built from this checkout with cargo for x86_64-unknown-linux-musl.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Download and extract the packages again even if the cache checks out.
        #[arg(long)]
        force: bool,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Build { data_dir, agent, force, json } => {
            let cache = data_dir.join("ppn-guest");
            let started = Instant::now();
            let options = ImageOptions { agent, force, verbose: !json };
            let img =
                image::ensure(&cache, &options).map_err(|e| format!("guest image in {}: {e}", cache.display()))?;
            let seconds = started.elapsed().as_secs_f64();
            if json {
                let packages: Vec<_> = img
                    .packages
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name, "version": p.version, "sha256": p.sha256}))
                    .collect();
                print_json(&serde_json::json!({
                    "kernel": img.kernel,
                    "initrd": img.initrd,
                    "cmdline": img.cmdline,
                    "kernel_release": img.kernel_release,
                    "modules": img.modules,
                    "packages": packages,
                    "agent_sha256": img.agent_sha256,
                    "cached": img.cached,
                    "packages_cached": img.packages_cached,
                    "seconds": seconds,
                }))?;
            } else {
                let state = if img.cached {
                    "cached"
                } else if img.packages_cached {
                    "initramfs rebuilt"
                } else {
                    "built"
                };
                println!("guest image ({state}, {seconds:.1} s), kernel {}", img.kernel_release);
                println!("  kernel  {}", img.kernel.display());
                println!("  initrd  {}", img.initrd.display());
                println!("  cmdline {}", img.cmdline);
                println!("  modules {}", img.modules.join(" "));
                for p in &img.packages {
                    println!("  package {} {}", p.name, p.version);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
