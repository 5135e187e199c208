//! `ppn verify REPORT --roots FILE --nonce HEX`: checks an attestation report offline, with no
//! fleet access: the reporting node's standing in the trust file (`ppn ledger trust`), its key
//! certificate, the report's signature and nonce, the image's provisioning statement (its
//! node's standing, certificate and signature) and that the VM booted the provisioned image.
//! Prints the chain it checked (root → node key → image → report); the first broken link is
//! the error (docs/attestation.md §1).

use ppn_attest::{Report, TrustFile};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The report (`ppn attest VM --nonce HEX > report.cbor`): a COSE_Sign1 EAT.
    pub report: PathBuf,
    /// The fleet's trust file (`ppn ledger trust > fleet.trust`).
    #[arg(long)]
    pub roots: PathBuf,
    /// The nonce the verifier gave, in hex (8 to 64 bytes).
    #[arg(long)]
    pub nonce: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// The VM (it must run from a sealed image: `ppn vm create --sealed`).
    pub name: String,
    #[command(flatten)]
    pub on: crate::vm::On,
    /// The verifier's nonce, in hex (8 to 64 bytes).
    #[arg(long)]
    pub nonce: String,
    /// Write the report here instead of to standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `ppn attest VM --nonce HEX`: the node's `vm-attest` op; the report's bytes (CBOR) go to
/// standard output or `--out`.
pub fn attest(args: &AttestArgs) -> Result<ExitCode, String> {
    use std::io::Write;
    let nonce = unhex(&args.nonce).map_err(|e| format!("--nonce: {e}"))?;
    if !(ppn_attest::NONCE_MIN..=ppn_attest::NONCE_MAX).contains(&nonce.len()) {
        return Err(format!("--nonce: {} bytes; a nonce is 8 to 64 bytes", nonce.len()));
    }
    let v = args.on.call(serde_json::json!({ "op": "vm-attest", "name": args.name, "nonce": hex(&nonce) }))?;
    let report = unhex(v["report"].as_str().ok_or("the node answered without a report")?)?;
    match &args.out {
        Some(p) => std::fs::write(p, &report).map_err(|e| format!("{}: {e}", p.display()))?,
        None => std::io::stdout().write_all(&report).map_err(|e| format!("standard output: {e}"))?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not hex: odd length"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("{s:?} is not hex")))
        .collect()
}

fn read(path: &PathBuf, max: usize) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if len > max as u64 {
        return Err(format!("{}: {len} bytes, over the limit of {max}", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: &VerifyArgs) -> Result<ExitCode, String> {
    let nonce = unhex(&args.nonce).map_err(|e| format!("--nonce: {e}"))?;
    let trust = TrustFile::parse(&read(&args.roots, ppn_attest::TRUST_FILE_MAX)?)
        .map_err(|e| format!("{}: {e}", args.roots.display()))?;
    let bytes = read(&args.report, ppn_attest::MAX_REPORT)?;
    let chain = Report::verify(&bytes, &trust, &nonce).map_err(|e| format!("{}: {e}", args.report.display()))?;
    let (r, p) = (&chain.report, &chain.provisioning);
    if args.json {
        crate::print_json(&serde_json::json!({
            "ok": true,
            "roots": args.roots.display().to_string(),
            "node": r.node.to_string(),
            "node_key": hex(&r.cert.node_key),
            "attestation_key": hex(&r.cert.attest_key),
            "image": p.image,
            "image_root_hash": hex(&p.verity.root_hash),
            "provisioned_by": p.cert.node.to_string(),
            "provisioned_unix_s": p.issued_unix_s,
            "vm": r.vm,
            "nonce": hex(&r.nonce),
            "issued_unix_s": r.issued_unix_s,
        }))?;
    } else {
        println!("root      node {} (key {}) is trusted in {}", r.node, hex(&r.cert.node_key), args.roots.display());
        println!("node key  certifies attestation key {}", hex(&r.cert.attest_key));
        println!(
            "image     {:?}: dm-verity root {} provisioned by node {} (trusted, attestation key {}) at {}",
            p.image,
            hex(&p.verity.root_hash),
            p.cert.node,
            hex(&p.cert.attest_key),
            p.issued_unix_s
        );
        println!("report    VM {:?} booted that image; nonce matches; signed at {}", r.vm, r.issued_unix_s);
        println!("verified");
    }
    Ok(ExitCode::SUCCESS)
}
