//! `ppn grant issue|verify|revoke`: capability grants, issued and checked by the TCB.

use crate::{Conn, print_json};
use ppn_wire::service::{NodeId, ResourceType, RevokeTarget, Verdict};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Have the TCB issue a capability token to a node for one resource.
    Issue {
        #[command(flatten)]
        conn: Conn,
        /// The node the grant is for (16 hex digits).
        #[arg(long, value_name = "NODEID", value_parser = parse_node_id)]
        grantee: NodeId,
        /// What it grants: TYPE:ID, TYPE one of memory, vm, image, mesh (for example vm:7).
        #[arg(long, value_name = "TYPE:ID", value_parser = parse_resource)]
        resource: Resource,
        /// How long it is valid from now: a number and s, m, h or d (30s, 10m, 2h, 7d). The TCB's
        /// clock decides when it has expired.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: u64,
    },
    /// Ask the TCB whether a token it issued is valid. Exits 0 only for a valid token.
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// The token, in hex, as `ppn grant issue` printed it.
        #[arg(value_name = "TOKENHEX", value_parser = parse_hex)]
        token: Bytes,
    },
    /// Have the TCB sign a revocation of a node, one grant, or a range of grants.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        target: Target,
    },
}

/// What `ppn grant revoke` revokes: `--node`, or `--issuer` with `--sequence` or `--range`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["node", "sequence", "range"])))]
pub struct Target {
    /// Revoke a node: tokens it issued or holds fail, and records it signs later are refused.
    #[arg(long, value_name = "NODEID", value_parser = parse_node_id, conflicts_with = "issuer")]
    node: Option<NodeId>,
    /// The node that issued the grants to revoke (with --sequence or --range).
    #[arg(long, value_name = "NODEID", value_parser = parse_node_id)]
    issuer: Option<NodeId>,
    /// Revoke the issuer's grant with this sequence number.
    #[arg(long, value_name = "N", requires = "issuer")]
    sequence: Option<u64>,
    /// Revoke the issuer's grants with sequence numbers A to B, both included.
    #[arg(long, value_name = "A..B", value_parser = parse_range, requires = "issuer")]
    range: Option<SequenceRange>,
}

impl Target {
    fn to_wire(&self) -> Result<RevokeTarget, String> {
        match (self.node, self.issuer, self.sequence, self.range) {
            (Some(node), None, None, None) => Ok(RevokeTarget::Node { node }),
            (None, Some(issuer), Some(sequence), None) => Ok(RevokeTarget::Grant { issuer, sequence }),
            (None, Some(issuer), None, Some(r)) => {
                Ok(RevokeTarget::GrantRange { issuer, first: r.first, last: r.last })
            }
            // clap's argument group and `requires` rule the rest out.
            _ => Err("give --node NODEID, or --issuer NODEID with --sequence N or --range A..B".into()),
        }
    }
}

/// A resource a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResourceType,
    pub id: u64,
}

/// Grant sequence numbers `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    pub first: u64,
    pub last: u64,
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

pub async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Issue { conn, grantee, resource, expires } => issue(&conn, grantee, resource, expires).await,
        Command::Verify { conn, token } => verify(&conn, &token.0).await,
        Command::Revoke { conn, target } => revoke(&conn, &target).await,
    }
}

async fn issue(conn: &Conn, grantee: NodeId, resource: Resource, valid_s: u64) -> Result<ExitCode, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| format!("system clock: {e}"))?.as_secs();
    let expires_unix_s = now.checked_add(valid_s).ok_or("the expiry is past the end of time")?;
    let client = conn.connect().await?;
    let grant =
        client.issue_grant(grantee, resource.kind, resource.id, expires_unix_s).await.map_err(conn.context())?;
    let token = hex(&grant.token);
    if conn.json {
        print_json(&serde_json::json!({
            "token": token,
            "sequence": grant.sequence,
            "grantee": grantee.to_string(),
            "resource": resource_name(resource),
            "expires_unix_s": expires_unix_s,
        }))?;
    } else {
        println!("token     {token}");
        println!("sequence  {}", grant.sequence);
        println!("grantee   {grantee}");
        println!("resource  {}", resource_name(resource));
        println!("expires   {expires_unix_s} (unix seconds, {valid_s}s from now)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(conn: &Conn, token: &[u8]) -> Result<ExitCode, String> {
    let client = conn.connect().await?;
    let verdict = client.verify_token(token).await.map_err(conn.context())?;
    let (name, meaning) = verdict_name(verdict);
    if conn.json {
        print_json(&serde_json::json!({ "verdict": name, "valid": verdict == Verdict::Valid }))?;
    } else {
        println!("{name}: {meaning}");
    }
    Ok(if verdict == Verdict::Valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn revoke(conn: &Conn, target: &Target) -> Result<ExitCode, String> {
    let target = target.to_wire()?;
    let client = conn.connect().await?;
    let record = client.revoke(target.clone()).await.map_err(conn.context())?;
    let (text, what) = match target {
        RevokeTarget::Node { node } => {
            (format!("node {node}"), serde_json::json!({ "kind": "node", "node": node.to_string() }))
        }
        RevokeTarget::Grant { issuer, sequence } => (
            format!("grant {sequence} of {issuer}"),
            serde_json::json!({ "kind": "grant", "issuer": issuer.to_string(), "sequence": sequence }),
        ),
        RevokeTarget::GrantRange { issuer, first, last } => (
            format!("grants {first}..{last} of {issuer}"),
            serde_json::json!({ "kind": "grant-range", "issuer": issuer.to_string(), "first": first, "last": last }),
        ),
    };
    if conn.json {
        print_json(&serde_json::json!({ "record_id": format!("{record:x}"), "revoked": what }))?;
    } else {
        println!("record   {record:x}");
        println!("revoked  {text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A verdict's name (for output and JSON) and what it means.
pub fn verdict_name(v: Verdict) -> (String, &'static str) {
    let (name, meaning) = match v {
        Verdict::Valid => ("valid", "issued by this node, unexpired, and nothing it names is revoked"),
        Verdict::Malformed => ("malformed", "not a token of a known version and size"),
        Verdict::BadTag => ("bad-tag", "the tag does not check: altered, forged, or not issued by this node"),
        Verdict::Expired => ("expired", "past its expiry by the TCB's clock"),
        Verdict::IssuerRevoked => ("issuer-revoked", "the issuing node has been revoked"),
        Verdict::GranteeRevoked => ("grantee-revoked", "the node it was granted to has been revoked"),
        Verdict::GrantRevoked => ("grant-revoked", "this grant has been revoked"),
        Verdict::UnknownIssuer => ("unknown-issuer", "the issuer is not a trusted member of this node's fleet"),
        Verdict::BadEndorsement => ("bad-endorsement", "the issuer's endorsement does not check: altered or forged"),
        Verdict::Unknown(n) => return (format!("unknown({n})"), "a verdict from a newer TCB"),
    };
    (name.to_owned(), meaning)
}

fn resource_name(r: Resource) -> String {
    let kind = match r.kind {
        ResourceType::Memory => "memory".to_owned(),
        ResourceType::Vm => "vm".to_owned(),
        ResourceType::Image => "image".to_owned(),
        ResourceType::Mesh => "mesh".to_owned(),
        ResourceType::Unknown(n) => format!("unknown({n})"),
    };
    format!("{kind}:{}", r.id)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits, either case, even in number.
pub fn parse_hex(s: &str) -> Result<Bytes, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("{} hex digits: an odd number cannot be bytes", s.len()));
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let digit =
                |b: u8| char::from(b).to_digit(16).ok_or_else(|| format!("{:?} is not a hex digit", char::from(b)));
            Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Bytes)
}

/// A node id: 16 hex digits, as `ppn tcb status` prints it.
pub fn parse_node_id(s: &str) -> Result<NodeId, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not 16 hex digits"))
}

/// `TYPE:ID`: memory, vm, image or mesh, then a decimal id.
pub fn parse_resource(s: &str) -> Result<Resource, String> {
    let (kind, id) = s.split_once(':').ok_or_else(|| format!("{s:?} is not TYPE:ID (for example vm:7)"))?;
    let kind = match kind {
        "memory" => ResourceType::Memory,
        "vm" => ResourceType::Vm,
        "image" => ResourceType::Image,
        "mesh" => ResourceType::Mesh,
        other => return Err(format!("{other:?} is not a resource type: memory, vm, image or mesh")),
    };
    let id = id.parse().map_err(|_| format!("{id:?} is not a resource id (a number up to 2^64-1)"))?;
    Ok(Resource { kind, id })
}

/// A duration in seconds: a positive number and a unit, `s`, `m`, `h` or `d` (30s, 10m, 2h, 7d).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration: a number and s, m, h or d (30s, 10m, 2h, 7d)");
    let unit = match s.chars().last().ok_or_else(bad)? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{s:?}: a grant must be valid for more than 0 seconds"));
    }
    n.checked_mul(unit).ok_or_else(|| format!("{s:?} is too long"))
}

/// `A..B`: sequence numbers A to B, both included, A <= B.
pub fn parse_range(s: &str) -> Result<SequenceRange, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?} is not a range A..B"))?;
    let num = |x: &str| x.parse::<u64>().map_err(|_| format!("{x:?} in {s:?} is not a sequence number"));
    let (first, last) = (num(a)?, num(b)?);
    if first > last {
        return Err(format!("{s:?}: the first sequence number is above the last"));
    }
    Ok(SequenceRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppn_wire::ByteArray;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "s", "10", "1w", "-1h", "1.5h", "h1", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration(&format!("{}d", u64::MAX)).unwrap_err().contains("too long"));
    }

    #[test]
    fn resources() {
        assert_eq!(parse_resource("vm:7"), Ok(Resource { kind: ResourceType::Vm, id: 7 }));
        assert_eq!(parse_resource("memory:0"), Ok(Resource { kind: ResourceType::Memory, id: 0 }));
        assert_eq!(parse_resource("image:18446744073709551615").unwrap().id, u64::MAX);
        assert_eq!(parse_resource("mesh:1").unwrap().kind, ResourceType::Mesh);
        assert!(parse_resource("disk:1").unwrap_err().contains("memory, vm, image or mesh"));
        for bad in ["vm", "vm:", "vm:x", "vm:-1", ":1", "VM:1"] {
            assert!(parse_resource(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_ids_hex_and_ranges() {
        assert_eq!(
            parse_node_id("00112233445566ff"),
            Ok(NodeId(ByteArray([0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0xff])))
        );
        assert_eq!(parse_node_id("00112233445566FF").unwrap().to_string(), "00112233445566ff");
        for bad in ["0011223344556677aa", "00112233445566f", "001122334455667g", ""] {
            assert!(parse_node_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_hex("00ff10").unwrap().0, [0, 0xff, 0x10]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(parse_range("3..9"), Ok(SequenceRange { first: 3, last: 9 }));
        assert_eq!(parse_range("4..4"), Ok(SequenceRange { first: 4, last: 4 }));
        for bad in ["9..3", "3", "3..", "..3", "a..b", "3...4"] {
            assert!(parse_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_verdict_has_a_distinct_name() {
        let all = [
            Verdict::Valid,
            Verdict::Malformed,
            Verdict::BadTag,
            Verdict::Expired,
            Verdict::IssuerRevoked,
            Verdict::GranteeRevoked,
            Verdict::GrantRevoked,
            Verdict::Unknown(99),
        ];
        let names: std::collections::BTreeSet<String> = all.iter().map(|v| verdict_name(*v).0).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(verdict_name(Verdict::Unknown(99)).0, "unknown(99)");
    }
}
