//! The Unix socket server: one thread per connection, COBS-framed requests in, responses out.

use crate::tcb::Tcb;
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::{ErrorCode, MAX_FRAME_LEN, Response};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Binds the socket at `path` (mode 0600). A stale socket file is replaced; a socket that still
/// answers (another TCB) or a path that is not a socket is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by a running process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections forever, at most `max_connections` at a time; one over the limit gets a
/// `Busy` error frame and is closed.
pub fn serve(listener: UnixListener, tcb: Arc<Mutex<Tcb>>, max_connections: usize) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ppn-tcb: accept: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = refuse_busy(&mut conn);
            continue;
        }
        let tcb = Arc::clone(&tcb);
        let active = Arc::clone(&active);
        std::thread::spawn(move || {
            if let Err(e) = connection(conn, &tcb)
                && e.kind() != io::ErrorKind::BrokenPipe
                && e.kind() != io::ErrorKind::ConnectionReset
            {
                eprintln!("ppn-tcb: connection: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

fn refuse_busy(conn: &mut UnixStream) -> io::Result<()> {
    let mut frame = vec![0u8; MAX_FRAME_LEN];
    let n = ppn_wire::encode_response(0, &Response::error(ErrorCode::Busy, "too many connections"), &mut frame)
        .map_err(io::Error::other)?;
    write_frame(conn, &frame[..n], &mut vec![0u8; MAX_ENCODED_LEN])
}

fn write_frame(w: &mut impl Write, frame: &[u8], enc: &mut [u8]) -> io::Result<()> {
    let n = stream::encode(frame, enc).map_err(io::Error::other)?;
    w.write_all(&enc[..n])
}

fn lock(tcb: &Mutex<Tcb>) -> std::sync::MutexGuard<'_, Tcb> {
    // A panic while holding the TCB would leave its state unknown: stop rather than go on.
    tcb.lock().unwrap_or_else(|_| {
        eprintln!("ppn-tcb: TCB lock poisoned by a panic; aborting");
        std::process::abort()
    })
}

/// Serves one connection until it closes. Each request is answered in order; a response is
/// written only after the request's effects are durable, so a dropped connection loses nothing
/// that was acknowledged.
fn connection(conn: UnixStream, tcb: &Mutex<Tcb>) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let mut writer = BufWriter::with_capacity(64 * 1024, conn);
    let mut deframer = Box::new(Deframer::new());
    let mut input = vec![0u8; 64 * 1024];
    let mut frame_out = vec![0u8; MAX_FRAME_LEN];
    let mut enc = vec![0u8; MAX_ENCODED_LEN];
    loop {
        let n = match reader.read(&mut input) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &input[..n];
        while !rest.is_empty() {
            let (used, event) = deframer.push(rest);
            rest = &rest[used..];
            let len = match event {
                None => continue,
                Some(Ok(frame)) => lock(tcb).handle_frame(frame, &mut frame_out),
                Some(Err(e)) => lock(tcb).stream_error(e, &mut frame_out),
            };
            write_frame(&mut writer, &frame_out[..len], &mut enc)?;
        }
        writer.flush()?;
    }
}
