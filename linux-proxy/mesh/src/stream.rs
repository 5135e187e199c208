//! TCP streams inside the tunnel: [`MeshStream`] and [`MeshListener`].
//!
//! A stream and the mesh task share one [`Pipe`]: a bounded byte ring each way under a short
//! mutex. The stream's reads and writes touch only the pipe; the task moves bytes between the
//! pipe and its smoltcp socket, and wakes whichever side waits. Nothing here is unbounded: a
//! writer waits while its ring is full, and the task stops reading a socket while the reader's
//! ring is full (so the TCP window closes and the sender waits).

use crate::engine::Shared;
use smoltcp::storage::RingBuffer;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// Why a stream ended other than by an orderly close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection was reset, or smoltcp gave up on it (no answer within the idle timeout).
    Reset,
    /// The peer was removed from the mesh.
    PeerRemoved,
    /// The mesh task stopped.
    MeshStopped,
}

impl Failure {
    fn to_io(self) -> io::Error {
        match self {
            Failure::Reset => io::Error::new(io::ErrorKind::ConnectionReset, "mesh stream reset or timed out"),
            Failure::PeerRemoved => io::Error::new(io::ErrorKind::ConnectionAborted, "mesh peer removed"),
            Failure::MeshStopped => io::Error::new(io::ErrorKind::NotConnected, "mesh stopped"),
        }
    }
}

pub(crate) struct PipeState {
    /// Received bytes, task to reader.
    pub rx: RingBuffer<'static, u8>,
    /// Bytes to send, writer to task.
    pub tx: RingBuffer<'static, u8>,
    /// The remote side closed its half and every byte it sent is in `rx` (or was read).
    pub eof: bool,
    /// The connection failed; reads return the error once `rx` is empty, writes at once.
    pub failure: Option<Failure>,
    /// The connection can carry no more bytes out (closed, or we shut our half down).
    pub write_closed: bool,
    /// The stream asked to close its sending half after what is in `tx`.
    pub shutdown: bool,
    /// The stream handle is gone.
    pub dropped: bool,
    /// The task found `rx` full and left bytes in the socket: the reader must wake it.
    pub rx_blocked: bool,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
}

impl PipeState {
    pub fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }

    pub fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    /// Ends the stream with `failure` unless it already ended, and wakes both sides.
    pub fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() && !(self.eof && self.write_closed) {
            self.failure = Some(failure);
        }
        self.write_closed = true;
        self.wake_reader();
        self.wake_writer();
    }
}

/// The state a [`MeshStream`] shares with the mesh task.
pub(crate) struct Pipe {
    state: Mutex<PipeState>,
}

impl Pipe {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PipeState {
                rx: RingBuffer::new(vec![0u8; capacity]),
                tx: RingBuffer::new(vec![0u8; capacity]),
                eof: false,
                failure: None,
                write_closed: false,
                shutdown: false,
                dropped: false,
                rx_blocked: false,
                read_waker: None,
                write_waker: None,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A panic while holding this lock cannot leave the rings inconsistent (they update
        // their indices last), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A TCP connection to another node, inside the tunnel.
///
/// Reads and writes go through bounded buffers to the mesh task. `shutdown` closes the sending
/// half after the buffered bytes (a FIN); dropping the stream does the same, and whatever the
/// other side still sends is discarded. A stream to a peer that is removed from the mesh fails at
/// once with `ConnectionAborted`; one whose peer stops answering fails with `ConnectionReset`
/// after the mesh's TCP idle timeout.
pub struct MeshStream {
    pipe: Arc<Pipe>,
    shared: Arc<Shared>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl std::fmt::Debug for MeshStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStream").field("local", &self.local).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl MeshStream {
    pub(crate) fn new(pipe: Arc<Pipe>, shared: Arc<Shared>, local: SocketAddr, peer: SocketAddr) -> Self {
        Self { pipe, shared, local, peer }
    }

    /// This end's mesh address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other end's mesh address and port.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut p = self.pipe.lock();
        if !p.rx.is_empty() {
            let n = p.rx.dequeue_slice(buf.initialize_unfilled());
            buf.advance(n);
            if std::mem::take(&mut p.rx_blocked) {
                drop(p);
                self.shared.notify.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(failure) = p.failure {
            return Poll::Ready(Err(failure.to_io()));
        }
        if p.eof {
            return Poll::Ready(Ok(()));
        }
        p.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut p = self.pipe.lock();
        if let Some(failure) = p.failure {
            return Poll::Ready(Err(failure.to_io()));
        }
        if p.write_closed || p.shutdown {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "mesh stream closed for writing")));
        }
        let n = p.tx.enqueue_slice(data);
        if n == 0 {
            p.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(p);
        self.shared.notify.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes in the ring are on their way: the task hands them to TCP as fast as the window
        // allows. Like a kernel socket, flushing does not wait for the other side.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut p = self.pipe.lock();
        if let Some(failure) = p.failure {
            return Poll::Ready(Err(failure.to_io()));
        }
        p.shutdown = true;
        drop(p);
        self.shared.notify.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for MeshStream {
    fn drop(&mut self) {
        let mut p = self.pipe.lock();
        p.dropped = true;
        p.shutdown = true;
        p.read_waker = None;
        p.write_waker = None;
        drop(p);
        self.shared.notify.notify_one();
    }
}

/// Accepts TCP connections to one port of this node's mesh address.
///
/// The mesh keeps `listen_backlog` listening sockets on the port and queues at most that many
/// established connections for [`MeshListener::accept`]; connections beyond that are reset.
/// Dropping the listener closes the port.
pub struct MeshListener {
    port: u16,
    accepted: mpsc::Receiver<MeshStream>,
}

impl std::fmt::Debug for MeshListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshListener").field("port", &self.port).finish_non_exhaustive()
    }
}

impl MeshListener {
    pub(crate) fn new(port: u16, accepted: mpsc::Receiver<MeshStream>) -> Self {
        Self { port, accepted }
    }

    /// The port this listener accepts on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next established connection. Fails only when the mesh has stopped.
    pub async fn accept(&mut self) -> Result<MeshStream, crate::MeshError> {
        self.accepted.recv().await.ok_or(crate::MeshError::Stopped)
    }
}
