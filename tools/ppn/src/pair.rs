//! `ppn pair --listen ADDR | --connect ADDR`: the pairing ceremony between two nodes, over one
//! TCP connection this command relays. The TCBs run CPace and key confirmation (docs/pairing.md);
//! this side only moves their messages and asks the operator whether the six-digit SAS shown
//! here is the one the other node shows. Only a "yes" makes this node's TCB admit the peer.
//!
//! After the SAS, the two sides trade their admission records over the same connection: the
//! connecting side's TCB decides first and its record goes to the listening side, whose TCB
//! ingests it before signing its own (so that record descends from the listener's admission and
//! the whole fleet accepts it); the listener's record comes back and is ingested. A side whose
//! operator says no sends an empty record, and the other side then admits nobody either if it has
//! not decided yet.

use crate::{Conn, print_json};
use base64::Engine as _;
use ppn_pairing::message::{HEADER_LEN, Header, MAX_MESSAGE_LEN};
use ppn_tcb_client::TcbClient;
use ppn_wire::service::{IngestOutcome, PairRole, PairedPeer};
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long to wait for the other node to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for one message from the other node.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    /// Wait for the other node here (it runs `ppn pair --connect` to this address).
    #[arg(long, conflicts_with = "connect", required_unless_present = "connect")]
    listen: Option<SocketAddr>,
    /// Connect to the other node, which runs `ppn pair --listen`.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// The one-time code (10 characters, as `7K3M9-QX2HD`). With --listen and no code, a new
    /// one is made and shown; with --connect and no code, it is asked for.
    #[arg(long)]
    code: Option<String>,
    /// This node's mesh (WireGuard) public key, base64, which the other node key-confirms and
    /// records with its admission.
    #[arg(long, conflicts_with = "node", required_unless_present = "node")]
    wireguard_key: Option<String>,
    /// This node's `ppn-node` directory: the mesh key is read from the running node daemon, and
    /// after both sides admitted each other each daemon is told where the other's mesh listens.
    #[arg(long)]
    node: Option<PathBuf>,
}

/// What `--node` gives: the daemon's control socket and its mesh UDP port.
struct NodeDaemon {
    control: PathBuf,
    mesh_port: u16,
}

fn decode_key(b64: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("--wireguard-key: not base64: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("--wireguard-key: {} bytes, a WireGuard key has 32", b.len()))
}

fn new_code() -> Result<String, String> {
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(ppn_pairing::Code::from_random(&random).to_string())
}

fn prompt(question: &str) -> Result<String, String> {
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the answer: {e}"))?;
    Ok(line.trim().to_owned())
}

async fn send(stream: &mut TcpStream, message: &[u8]) -> Result<(), String> {
    stream.write_all(message).await.map_err(|e| format!("sending to the other node: {e}"))
}

/// Reads one pairing message: the 8-byte header says how long the rest is.
async fn receive(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let read = async {
        let mut msg = vec![0u8; HEADER_LEN];
        stream.read_exact(&mut msg).await.map_err(|e| format!("the other node hung up: {e}"))?;
        let header = Header::parse(&msg).map_err(|e| format!("the other node sent no pairing message: {e}"))?;
        if HEADER_LEN + header.body_len > MAX_MESSAGE_LEN {
            return Err("the other node sent an oversized message".to_owned());
        }
        msg.resize(HEADER_LEN + header.body_len, 0);
        stream.read_exact(&mut msg[HEADER_LEN..]).await.map_err(|e| format!("the other node hung up: {e}"))?;
        Ok(msg)
    };
    tokio::time::timeout(MESSAGE_TIMEOUT, read).await.map_err(|_| "the other node did not answer in time".to_owned())?
}

pub async fn run(args: Args) -> Result<ExitCode, String> {
    let (wireguard_key, daemon) = match (&args.wireguard_key, &args.node) {
        (Some(k), _) => (decode_key(k)?, None),
        (None, Some(dir)) => {
            let control = dir.join("node.sock");
            let status = ppn_node::fleet::control(&control, &serde_json::json!({ "op": "status" }))?["status"].take();
            let key = decode_key(status["mesh_key"].as_str().ok_or("the node daemon gave no mesh key")?)?;
            let endpoint: SocketAddr = status["mesh_endpoint"]
                .as_str()
                .and_then(|e| e.parse().ok())
                .ok_or("the node daemon gave no mesh endpoint")?;
            (key, Some(NodeDaemon { control, mesh_port: endpoint.port() }))
        }
        (None, None) => return Err("give --wireguard-key KEY or --node DIR".into()),
    };
    let tcb = args.conn.connect().await?;
    let ctx = args.conn.context();
    let (peer, mut stream, listener_side, peer_ip) = match (args.listen, args.connect) {
        (Some(addr), _) => {
            let code = match args.code {
                Some(c) => c,
                None => {
                    let c = new_code()?;
                    eprintln!("pairing code: {c}   (type it on the other node)");
                    c
                }
            };
            // Checked by the TCB before anyone connects: a typo fails here, not after.
            tcb.pair_begin(PairRole::Responder, &code, wireguard_key).await.map_err(&ctx)?;
            let listener = TcpListener::bind(addr).await.map_err(|e| format!("listen on {addr}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            eprintln!("listening on {bound}");
            let (mut stream, from) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept())
                .await
                .map_err(|_| "no node connected in time".to_owned())?
                .map_err(|e| format!("accept: {e}"))?;
            eprintln!("connection from {from}");
            let hello = receive(&mut stream).await?;
            let reply = tcb.pair_step(&hello).await.map_err(&ctx)?;
            send(&mut stream, &reply.message).await?;
            let confirm = receive(&mut stream).await?;
            let done = tcb.pair_step(&confirm).await.map_err(&ctx)?;
            (done.paired.ok_or("the TCB finished the ceremony without a peer")?, stream, true, from.ip())
        }
        (None, Some(addr)) => {
            let code = match args.code {
                Some(c) => c,
                None => prompt("pairing code shown on the other node: ")?,
            };
            let hello = tcb.pair_begin(PairRole::Initiator, &code, wireguard_key).await.map_err(&ctx)?;
            let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
            send(&mut stream, &hello.message).await?;
            let reply = receive(&mut stream).await?;
            let confirmed = tcb.pair_step(&reply).await.map_err(&ctx)?;
            send(&mut stream, &confirmed.message).await?;
            (confirmed.paired.ok_or("the TCB finished the ceremony without a peer")?, stream, false, addr.ip())
        }
        (None, None) => return Err("give --listen ADDR or --connect ADDR".into()),
    };
    let code = decide(&tcb, &peer, &mut stream, listener_side, args.conn.json, &ctx).await?;
    // Both sides tell each other where their mesh listens (0: no daemon given), and a side with
    // a daemon hands the peer's endpoint to it: the peer's address as this connection saw it,
    // with its mesh port. A hint only; WireGuard authenticates whoever answers there.
    let own_port = daemon.as_ref().map_or(0, |d| d.mesh_port);
    send(&mut stream, &own_port.to_le_bytes()).await?;
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await.map_err(|e| format!("the other node hung up: {e}"))?;
    let port = u16::from_le_bytes(port);
    if let Some(d) = &daemon
        && port != 0
        && code == ExitCode::SUCCESS
    {
        let endpoint = SocketAddr::new(peer_ip_for(peer_ip), port);
        let hint =
            serde_json::json!({ "op": "hint", "node": peer.node_id.to_string(), "endpoint": endpoint.to_string() });
        ppn_node::fleet::control(&d.control, &hint)?;
        eprintln!("told this node's daemon that {} listens at {endpoint}", peer.node_id);
    }
    Ok(code)
}

/// The address to reach the peer's mesh at: the peer's address on this connection (an IPv4
/// address mapped into IPv6 is unmapped).
fn peer_ip_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How long to wait for the other operator's answer.
const DECISION_TIMEOUT: Duration = Duration::from_secs(300);

/// Sends an admission record (empty: not admitted) as a u16 length and the bytes.
async fn send_record(stream: &mut TcpStream, record: &[u8]) -> Result<(), String> {
    let mut msg = (record.len() as u16).to_le_bytes().to_vec();
    msg.extend_from_slice(record);
    send(stream, &msg).await
}

async fn receive_record(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(|e| format!("the other node hung up: {e}"))?;
        let len = usize::from(u16::from_le_bytes(len));
        if len > ppn_wire::service::RECORD_MAX {
            return Err("the other node sent an oversized record".to_owned());
        }
        let mut record = vec![0u8; len];
        stream.read_exact(&mut record).await.map_err(|e| format!("the other node hung up: {e}"))?;
        Ok(record)
    };
    tokio::time::timeout(DECISION_TIMEOUT, read)
        .await
        .map_err(|_| "the other operator did not answer in time".to_owned())?
}

fn sas_text(sas: u32) -> String {
    format!("{:03} {:03}", sas / 1000, sas % 1000)
}

async fn decide(
    tcb: &TcbClient,
    peer: &PairedPeer,
    stream: &mut TcpStream,
    listener_side: bool,
    json: bool,
    ctx: &impl Fn(ppn_tcb_client::ClientError) -> String,
) -> Result<ExitCode, String> {
    let mesh = base64::engine::general_purpose::STANDARD.encode(peer.wireguard_key.0);
    eprintln!("peer node     {}", peer.node_id);
    eprintln!("peer mesh key {mesh}");
    eprintln!("SAS           {}", sas_text(peer.sas));
    let answer = prompt(&format!("Does the other node show {}? Admit it? [y/N] ", sas_text(peer.sas)))?;
    let yes = matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes");
    let (decided, peer_admitted) = if listener_side {
        // The connecting side decided first: take its record, then decide and answer.
        let theirs = receive_record(stream).await?;
        let admit = yes && !theirs.is_empty();
        let decided = tcb.pair_decide(peer.node_id, peer.sas, admit, &theirs).await.map_err(ctx)?;
        send_record(stream, &decided.record).await?;
        (decided, !theirs.is_empty())
    } else {
        let decided = tcb.pair_decide(peer.node_id, peer.sas, yes, &[]).await.map_err(ctx)?;
        send_record(stream, &decided.record).await?;
        let theirs = receive_record(stream).await?;
        if !theirs.is_empty() {
            let outcome = tcb.ingest_records(&[&theirs[..]]).await.map_err(ctx)?;
            if !matches!(outcome[..], [IngestOutcome::Accepted | IngestOutcome::Duplicate]) {
                return Err(format!("this node's TCB refused the other node's admission record: {outcome:?}"));
            }
        }
        (decided, !theirs.is_empty())
    };
    if !peer_admitted {
        eprintln!("the other node did not admit this one");
    }
    let record = decided.record_id;
    if json {
        print_json(&serde_json::json!({
            "peer": peer.node_id.to_string(), "wireguard_key": mesh, "sas": format!("{:06}", peer.sas),
            "admitted": record.is_some(), "record_id": record.map(|r| format!("{r:x}")),
            "admitted_by_peer": peer_admitted,
        }))?;
    } else {
        match record {
            Some(r) => println!("admitted {} (record {r:x})", peer.node_id),
            None => println!("not admitted: {}", peer.node_id),
        }
    }
    Ok(if record.is_some() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
