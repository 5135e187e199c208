//! The TCB conformance suite.
//!
//! Every check takes a socket path and nothing else, so the same checks run against a hosted
//! `ppn-tcb` (always) and against a booted seL4 image's link (when `MICROKIT_SDK` is set, in a
//! later issue). [`HostedTcb`] starts and stops a real `ppn-tcb` process for tests.
//!
//! The ledger checks ([`ledger`]) and `every-kind-answered` append records to the ledger of the
//! TCB under test (grants to and revocations of made-up node ids): run the suite against a test
//! node's TCB.

use ppn_tcb_client::ClientError;
use ppn_tcb_client::blocking::Client;
use ppn_wire::message::{AttestRequest, LedgerRequest, LenderRequest, NodeRequest, NodeResponse, PairRequest};
use ppn_wire::service::*;
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::{ByteArray, ErrorCode, Header, Kind, MAX_BODY_LEN, MAX_FRAME_LEN, Request, Response};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod hosted;
pub mod ledger;
pub mod lender;
pub use hosted::{HostedTcb, locate_bin};
pub use ledger::{check_ledger_ingest, check_ledger_lifecycle, check_persistence_across_restart};
pub use lender::check_lending;

/// Timeout of one request in the checks.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// What a check found (`Ok`) or why it failed (`Err`).
pub type CheckResult = Result<String, String>;

/// A named check that needs only the TCB's socket.
pub type Check = (&'static str, Box<dyn Fn(&Path) -> CheckResult>);

fn err(context: &str) -> impl FnOnce(ClientError) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// A small deterministic generator (SplitMix64), so a failing run can be replayed by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

fn node(client: &mut Client, req: NodeRequest) -> Result<NodeResponse, String> {
    match client.call(&Request::Node(req.clone())).map_err(err("node request"))? {
        Response::Node(r) => Ok(r),
        r => Err(format!("{req:?} answered with {:?}", r.kind())),
    }
}

/// Node service: identity, public keys and status agree with each other.
pub fn check_node_service(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let NodeResponse::Identity(id) = node(&mut c, NodeRequest::Identity)? else { return Err("not an identity".into()) };
    let NodeResponse::PublicKeys(keys) = node(&mut c, NodeRequest::PublicKeys)? else { return Err("not keys".into()) };
    let NodeResponse::Status(status) = node(&mut c, NodeRequest::Status)? else { return Err("not a status".into()) };
    if keys.node_id != id.node_id || status.node_id != id.node_id {
        return Err(format!(
            "node ids disagree: identity {} keys {} status {}",
            id.node_id, keys.node_id, status.node_id
        ));
    }
    if keys.signing_key == ByteArray::ZERO {
        return Err("signing key is all zero".into());
    }
    if status.boot_count == 0 {
        return Err("boot count is 0".into());
    }
    if status.requests_served < 2 {
        return Err(format!("status counts {} served requests; this connection alone made 2", status.requests_served));
    }
    if !status.services.iter().any(|s| s.service() == ppn_wire::Service::Node && s.state == ServiceState::Ready) {
        return Err("status does not list the node service as ready".into());
    }
    Ok(format!("node {} on {:?}, boot {}", id.node_id, id.platform, status.boot_count))
}

/// One request of every kind is answered, and the connection keeps serving: the kinds of every
/// service the TCB's `NodeStatus` calls ready with a response of the right kind (or a
/// `Rejected` error), the others (not landed, or not configured, like the lender of a node
/// that lends nothing) with `NotImplemented`.
pub fn check_every_kind_is_answered(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let NodeResponse::Status(status) = node(&mut c, NodeRequest::Status)? else { return Err("not a status".into()) };
    let ready: Vec<u8> = status.services.iter().filter(|s| s.state == ServiceState::Ready).map(|s| s.service).collect();
    for must in [ppn_wire::Service::Node, ppn_wire::Service::Ledger, ppn_wire::Service::Pair] {
        if !ready.contains(&must.to_u8()) {
            return Err(format!("the {} service is not ready", must.name()));
        }
    }
    let peer = ledger::fresh_node_id();
    let requests = [
        Request::Node(NodeRequest::Identity),
        Request::Node(NodeRequest::PublicKeys),
        Request::Node(NodeRequest::Status),
        Request::Ledger(LedgerRequest::IssueGrant(IssueGrant {
            grantee: peer,
            resource_type: ResourceType::Vm,
            resource_id: 1,
            expires_unix_s: u64::MAX,
        })),
        Request::Ledger(LedgerRequest::VerifyToken(VerifyToken { token: Default::default() })),
        Request::Ledger(LedgerRequest::Revoke(Revoke { target: RevokeTarget::Node { node: peer } })),
        Request::Ledger(LedgerRequest::IngestRecords(IngestRecords { records: Default::default() })),
        Request::Ledger(LedgerRequest::Heads),
        Request::Ledger(LedgerRequest::RecordsLacking(RecordsLacking { peer_heads: Default::default(), limit: 1 })),
        Request::Ledger(LedgerRequest::Summary),
        Request::Ledger(LedgerRequest::Roots),
        Request::Ledger(LedgerRequest::Members),
        Request::Ledger(LedgerRequest::Endorse(Endorse { token: Default::default() })),
        Request::Ledger(LedgerRequest::VerifyEndorsed(VerifyEndorsed {
            token: Default::default(),
            signature: ByteArray([5; 64]),
        })),
        Request::Lender(LenderRequest::PoolStatus),
        Request::Lender(LenderRequest::Reserve(Reserve { borrower: peer, blocks: 1, expires_unix_s: 1 })),
        Request::Lender(LenderRequest::CommitLease(CommitLease { reservation_id: 1 })),
        Request::Lender(LenderRequest::Release(Release { lease_id: 1 })),
        Request::Attest(AttestRequest::SignRootHash(SignRootHash {
            image: "every-kind".try_into().unwrap_or_default(),
            root_hash: ByteArray([2; 32]),
            salt: ByteArray([3; 32]),
            data_blocks: 1,
            hash_offset: 4096,
        })),
        // A provisioning statement that is not one: the TCB signs it (the verifier refuses it).
        Request::Attest(AttestRequest::SignReport(SignReport {
            vm: "every-kind".try_into().unwrap_or_default(),
            root_hash: ByteArray([2; 32]),
            provisioning: Default::default(),
            nonce: heapless::Vec::from_slice(&[3; 16]).unwrap_or_default(),
        })),
        // A code that does not parse: refused before any session starts.
        Request::Pair(PairRequest::Begin(PairBegin {
            role: PairRole::Responder,
            code: "not a code".try_into().unwrap_or_default(),
            wireguard_key: ByteArray([4; 32]),
        })),
        Request::Pair(PairRequest::Step(PairStep { message: Default::default() })),
        Request::Pair(PairRequest::Decide(PairDecide { peer, sas: 0, admit: false, peer_record: Default::default() })),
    ];
    // Every kind but the error frame, so a kind added to the protocol fails here until covered.
    if requests.len() != Kind::ALL.len() - 1 {
        return Err(format!("the check sends {} kinds, the protocol has {}", requests.len(), Kind::ALL.len() - 1));
    }
    let (mut served, mut not_implemented) = (0, 0);
    for req in &requests {
        let landed = ready.contains(&req.service().to_u8());
        match c.call(req) {
            Ok(r) if r.kind() == req.kind() => served += 1,
            Ok(r) => return Err(format!("{:?} answered with {:?}", req.kind(), r.kind())),
            Err(ClientError::Tcb { code: ErrorCode::NotImplemented, .. }) if !landed => not_implemented += 1,
            Err(ClientError::Tcb { code: ErrorCode::Rejected, .. }) => served += 1,
            Err(e) => return Err(format!("{:?}: {e}", req.kind())),
        }
    }
    node(&mut c, NodeRequest::Status)?;
    Ok(format!("{} kinds: {served} served, {not_implemented} not implemented here", requests.len()))
}

/// Builds one hostile chunk (no `0x00` inside, so it is exactly one chunk on the stream) and
/// says whether the TCB answers it. Chunk shapes: raw garbage, and COBS-encoded frames with a
/// valid or mangled header and random bodies, random kinds, lying lengths.
fn hostile_chunk(rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    match rng.below(6) {
        // Raw garbage, which the deframer takes as (usually invalid) COBS.
        0 | 1 => {
            let n = 1 + rng.below(600) as usize;
            out.resize(n, 0);
            rng.fill(out);
            for b in out.iter_mut() {
                *b = (*b).max(1);
            }
        }
        // A frame with a plausible header: known or random kind, either direction, a body
        // length that may lie, a random body.
        _ => {
            let body_len = rng.below(300) as usize;
            let mut frame = vec![0u8; 16 + body_len];
            let kind = if rng.below(2) == 0 {
                Kind::ALL[rng.below(Kind::ALL.len() as u64) as usize].to_u16()
            } else {
                rng.next_u64() as u16
            };
            let claimed = match rng.below(4) {
                0 => rng.next_u64() as u32,
                1 => (MAX_BODY_LEN + 1) as u32,
                _ => body_len as u32,
            };
            let header = Header {
                response: rng.below(5) == 0,
                kind: Kind::from_u16(kind),
                request_id: rng.next_u64() as u32,
                body_len: 0,
            };
            header.emit(&mut frame).expect("a header fits");
            frame[12..16].copy_from_slice(&claimed.to_le_bytes());
            rng.fill(&mut frame[16..]);
            if rng.below(8) == 0 {
                let i = rng.below(8) as usize;
                frame[i] ^= 1 << rng.below(8);
            }
            let mut enc = vec![0u8; MAX_ENCODED_LEN];
            let n = stream::encode(&frame, &mut enc).expect("fits");
            out.extend_from_slice(&enc[..n - 1]);
        }
    }
}

/// Sends `count` hostile chunks on one connection while reading answers on another thread,
/// checks that each chunk got exactly one answer (an error frame unless it happened to be a
/// valid request), then sends an oversize chunk and a valid request on the same connection and
/// checks the answer. Returns (chunks, error frames).
pub fn check_garbage_resilience(socket: &Path, count: usize, seed: u64) -> CheckResult {
    let mut conn = connect_raw(socket)?;
    conn.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut reader = conn.try_clone().map_err(|e| e.to_string())?;
    const PROBE_ID: u32 = 0xC0FF_EE01;
    let collector = std::thread::spawn(move || -> Result<(usize, usize, Option<Response>), String> {
        let mut deframer = Box::new(Deframer::new());
        let mut buf = vec![0u8; 64 * 1024];
        let (mut answers, mut errors) = (0usize, 0usize);
        loop {
            let n = reader.read(&mut buf).map_err(|e| format!("read after {answers} answers: {e}"))?;
            if n == 0 {
                return Err(format!("TCB closed the connection after {answers} answers"));
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, ev) = deframer.push(rest);
                rest = &rest[used..];
                match ev {
                    None => {}
                    Some(Err(e)) => return Err(format!("TCB sent an undecodable chunk: {e}")),
                    Some(Ok(frame)) => {
                        let (id, resp) =
                            ppn_wire::decode_response(frame).map_err(|e| format!("TCB sent a bad frame: {e}"))?;
                        if id == PROBE_ID {
                            return Ok((answers, errors, Some(resp)));
                        }
                        answers += 1;
                        if matches!(resp, Response::Error(_)) {
                            errors += 1;
                        }
                    }
                }
            }
        }
    });

    let mut rng = Rng::new(seed);
    let mut chunk = Vec::new();
    let mut batch = Vec::with_capacity(256 * 1024);
    for i in 0..count {
        hostile_chunk(&mut rng, &mut chunk);
        batch.extend_from_slice(&chunk);
        batch.push(0);
        if batch.len() > 128 * 1024 || i + 1 == count {
            conn.write_all(&batch).map_err(|e| format!("write: {e}"))?;
            batch.clear();
        }
    }
    // One chunk longer than any frame: dropped whole, one error frame.
    let oversize = vec![0x55u8; MAX_ENCODED_LEN + 100];
    conn.write_all(&oversize).and_then(|()| conn.write_all(&[0])).map_err(|e| format!("write: {e}"))?;
    let probe = Request::Node(NodeRequest::Status);
    let bytes = ppn_tcb_client::encode_request_stream(PROBE_ID, &probe).map_err(|e| e.to_string())?;
    conn.write_all(&bytes).map_err(|e| format!("write: {e}"))?;

    let (answers, errors, resp) = collector.join().map_err(|_| "reader thread panicked".to_string())??;
    let expected = count + 1;
    if answers != expected {
        return Err(format!("{expected} hostile chunks got {answers} answers (seed {seed})"));
    }
    match resp {
        // (How the TCB counts failures is its own business: on seL4 the link PD answers stream
        // errors itself and the service PDs never see them. The hosted test checks its counter.)
        Some(Response::Node(NodeResponse::Status(_))) => {
            Ok(format!("{expected} hostile chunks, {errors} error frames, then a valid status (seed {seed})"))
        }
        other => Err(format!("the valid request after the garbage got {other:?} (seed {seed})")),
    }
}

/// A connection dropped in the middle of a frame, and one that sends a frame and leaves before
/// reading the answer, do not disturb the TCB: a new connection is served.
pub fn check_dropped_connections(socket: &Path) -> CheckResult {
    for cut in [1usize, 8, 17] {
        let mut conn = connect_raw(socket)?;
        let bytes =
            ppn_tcb_client::encode_request_stream(7, &Request::Node(NodeRequest::Status)).map_err(|e| e.to_string())?;
        conn.write_all(&bytes[..cut.min(bytes.len() - 1)]).map_err(|e| e.to_string())?;
        drop(conn);
    }
    let mut conn = connect_raw(socket)?;
    let bytes =
        ppn_tcb_client::encode_request_stream(8, &Request::Node(NodeRequest::Identity)).map_err(|e| e.to_string())?;
    conn.write_all(&bytes).map_err(|e| e.to_string())?;
    drop(conn);
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    node(&mut c, NodeRequest::Identity)?;
    Ok("served after 4 dropped connections".into())
}

/// A frame over the size limit, and one of every header error, each get an error frame that
/// says why, with the request id when the header could be read.
pub fn check_bad_frames_are_explained(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let mut good = vec![0u8; MAX_FRAME_LEN];
    let n = ppn_wire::encode_request(42, &Request::Node(NodeRequest::Status), &mut good).map_err(|e| e.to_string())?;
    let good = &good[..n];
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.to_vec();
        f(&mut v);
        v
    };
    let cases: [(&str, Vec<u8>, u32, &str); 6] = [
        ("bad magic", mutate(&|v| v[0] = b'X'), 0, "magic"),
        ("version 9", mutate(&|v| v[4] = 9), 0, "version"),
        ("reserved flag", mutate(&|v| v[5] = 0x40), 0, "flag"),
        ("oversize length", mutate(&|v| v[12..16].copy_from_slice(&u32::MAX.to_le_bytes())), 0, "limit"),
        ("unknown kind", mutate(&|v| v[6..8].copy_from_slice(&0x7F7Fu16.to_le_bytes())), 42, "unknown"),
        (
            "trailing body bytes",
            mutate(&|v| {
                v.push(0xAA);
                v[12..16].copy_from_slice(&1u32.to_le_bytes());
            }),
            42,
            "trailing",
        ),
    ];
    for (name, frame, want_id, want_word) in cases {
        let mut enc = vec![0u8; MAX_ENCODED_LEN];
        let m = stream::encode(&frame, &mut enc).map_err(|e| e.to_string())?;
        c.send_raw(&enc[..m]).map_err(err("send"))?;
        let (id, resp) = c.recv().map_err(err(name))?;
        match resp {
            Response::Error(e) if e.code == ErrorCode::BadFrame && id == want_id && e.detail.contains(want_word) => {}
            other => {
                return Err(format!(
                    "{name}: got id {id} {other:?}, want BadFrame id {want_id} mentioning {want_word:?}"
                ));
            }
        }
    }
    node(&mut c, NodeRequest::Status)?;
    Ok("6 bad frames explained, connection still serving".into())
}

/// Every check that takes only a socket, by name.
pub fn checks() -> Vec<Check> {
    vec![
        ("node-service", Box::new(check_node_service)),
        ("every-kind-answered", Box::new(check_every_kind_is_answered)),
        ("ledger-lifecycle", Box::new(check_ledger_lifecycle)),
        ("ledger-ingest", Box::new(check_ledger_ingest)),
        ("bad-frames-explained", Box::new(check_bad_frames_are_explained)),
        ("dropped-connections", Box::new(check_dropped_connections)),
        ("garbage-10000", Box::new(|s: &Path| check_garbage_resilience(s, 10_000, 0x5EED))),
    ]
}

/// A raw connection that starts with one `0x00`, which ends whatever an earlier connection left
/// half-sent on a shared byte stream (the seL4 image's console), as the clients do.
fn connect_raw(socket: &Path) -> Result<UnixStream, String> {
    let mut conn = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    conn.write_all(&[0]).map_err(|e| format!("write: {e}"))?;
    Ok(conn)
}

/// Waits until `socket` accepts a connection, or `child` exits, or `timeout` passes.
pub fn wait_for_socket(socket: &Path, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("process exited with {status} before serving {}", socket.display()));
        }
        if start.elapsed() > timeout {
            return Err(format!("{} not served after {timeout:?}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `bin` with `args`, stderr captured to `log`.
pub fn spawn_logged(bin: &Path, args: &[&std::ffi::OsStr], log: &Path) -> std::io::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()
}
