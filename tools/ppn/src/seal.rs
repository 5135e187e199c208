//! `ppn image seal IMAGE`: a sealed copy of a guest image. The copy gets the image's dm-verity
//! hash tree appended in veritysetup's format (`ppn-verity`), and the node's TCB signs its root
//! hash with its attestation key (`AttestSignRootHash`): the provisioning statement, written
//! next to the copy as `SEALED.prov` (docs/attestation.md).
//!
//! Crash-safe: the copy and the statement are written to temporary names in the same
//! directory, fsynced, and renamed into place only once the TCB has signed; the original image
//! is never changed.

use crate::Conn;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// The guest image: a filesystem image of a whole number of 4096-byte blocks.
    pub image: PathBuf,
    /// The sealed copy (default: IMAGE.sealed); its statement is written next to it as
    /// SEALED.prov.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The image's name in the statement (default: the image's file name).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` through a temporary file, fsynced, renamed, directory fsynced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = with_suffix(path, ".tmp");
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", dir.display()))
}

pub async fn seal(args: &SealArgs) -> Result<ExitCode, String> {
    let out = args.out.clone().unwrap_or_else(|| with_suffix(&args.image, ".sealed"));
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args.image.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or("IMAGE has no file name")?,
    };
    if name.is_empty() || name.len() > ppn_wire::service::ATTEST_NAME_MAX {
        return Err(format!("the image name {name:?} must be 1 to 64 bytes (--name)"));
    }
    let client = args.conn.connect().await?;

    let tmp = with_suffix(&out, ".tmp");
    std::fs::copy(&args.image, &tmp)
        .map_err(|e| format!("copying {} to {}: {e}", args.image.display(), tmp.display()))?;
    let sealed =
        ppn_verity::seal(&tmp, random()?, random()?).map_err(|e| format!("sealing {}: {e}", args.image.display()));
    let params = match sealed {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let statement =
        client.sign_root_hash(&name, params.root_hash, params.salt, params.data_blocks, params.hash_offset).await;
    let statement = match statement {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(crate::at(&args.conn.socket, e));
        }
    };
    // What the TCB signed must be what was sealed.
    let p = ppn_attest::Provisioning::decode(&statement).map_err(|e| format!("the TCB's statement: {e}"))?;
    if p.verity.root_hash != params.root_hash
        || p.verity.salt != params.salt
        || p.verity.data_blocks != params.data_blocks
        || p.verity.hash_offset != params.hash_offset
        || p.image != name
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("the TCB signed other parameters than those sealed: {p:?}"));
    }
    let prov_path = with_suffix(&out, ".prov");
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    sync_dir(&out)?;
    write_atomic(&prov_path, &statement)?;

    let out_s = out.display().to_string();
    // The TCB recorded the statement in its ledger (an ImageProvisioned record) before it
    // answered; the record names the statement by this digest (`ppn ledger provisioned`).
    let statement_sha256: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&statement).iter().map(|b| format!("{b:02x}")).collect()
    };
    let value = serde_json::json!({
        "image": name,
        "sealed": out_s,
        "statement": prov_path.display().to_string(),
        "provisioning_node": p.cert.node.to_string(),
        "statement_sha256": statement_sha256,
        "root_hash": params.root_hex(),
        "salt": params.salt_hex(),
        "uuid": params.uuid_string(),
        "data_blocks": params.data_blocks,
        "hash_offset": params.hash_offset,
        "veritysetup_verify": std::iter::once("veritysetup".to_string()).chain(params.veritysetup_verify_args(&out_s)).collect::<Vec<_>>(),
    });
    if args.conn.json {
        crate::print_json(&value)?;
    } else {
        println!("sealed {} as {out_s}", args.image.display());
        println!("  root hash    {}", params.root_hex());
        println!("  data blocks  {} (4096 bytes), hash tree at byte {}", params.data_blocks, params.hash_offset);
        println!("  statement    {} (signed by node {})", prov_path.display(), p.cert.node);
        println!("  in the ledger as statement sha256 {statement_sha256} (ppn ledger provisioned)");
        println!("  check with   veritysetup {}", params.veritysetup_verify_args(&out_s).join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
