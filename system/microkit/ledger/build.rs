//! Records the build time: the ledger PD's clock starts from it (the image has no RTC yet).
fn main() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    println!("cargo:rustc-env=PPN_BUILD_UNIX_S={now}");
    println!("cargo:rerun-if-changed=build.rs");
}
