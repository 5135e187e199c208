//! The migration stream between the two proxies: what carries QEMU's migration stream from the
//! source's loopback port, through the mesh, into the destination's (docs/migration.md).
//!
//! The request names the stream's [`StreamEncoding`]. With [`StreamEncoding::Zstd`] the bytes on
//! the mesh are one zstd frame (RFC 8878) of QEMU's stream, flushed at every chunk read from
//! QEMU, so that nothing QEMU wrote waits in the compressor: the last bytes of the switch-over
//! leave at once. With [`StreamEncoding::Plain`] they are QEMU's bytes.
//!
//! Why compress: the tunnel (WireGuard + smoltcp in userspace) costs far more CPU per byte
//! than loopback TCP, and QEMU's stream of a guest's memory pages compresses about 3:1 (an
//! idle guest's kernel, modules, page tables). On each side reading, (de)compressing and writing
//! run as three stages with at most [`DEPTH`] chunks between two of them, so that compressing
//! one chunk overlaps sending the previous one, and little is queued: QEMU's own estimate of
//! its bandwidth and downtime stays close to what the tunnel does.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The most bytes one read takes from QEMU or from the mesh.
pub const CHUNK: usize = 128 << 10;
/// Chunks queued between two stages.
pub const DEPTH: usize = 2;
/// QEMU stream bytes the source keeps in flight beyond what the destination reported handed
/// to its QEMU (`Loaded`). Whatever is in flight when the source QEMU stops the guest crosses
/// the tunnel and is loaded during the guest's pause, at about 100 MB/s here: 1 MiB is about
/// 10 ms. It also caps the stream's rate at WINDOW per round trip of the tunnel, so the
/// stream here, 1 ms round trips and a pipeline of a few 128 KiB chunks, keeps its pace.
pub const WINDOW: u64 = 1 << 20;
/// zstd's level for the source: about 3.7:1 on an idle guest's stream; levels -3 and -7 were
/// no faster end to end here (docs/migration.md).
pub const ZSTD_LEVEL: i32 = 1;

/// How the migration stream is carried on the mesh; one byte of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEncoding {
    /// QEMU's bytes as they are.
    Plain,
    /// One zstd frame.
    Zstd,
    /// A code this build does not know; the destination refuses it.
    Unknown(u8),
}

impl StreamEncoding {
    pub fn code(self) -> u8 {
        match self {
            StreamEncoding::Plain => 0,
            StreamEncoding::Zstd => 1,
            StreamEncoding::Unknown(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            0 => StreamEncoding::Plain,
            1 => StreamEncoding::Zstd,
            c => StreamEncoding::Unknown(c),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamEncoding::Plain => "plain",
            StreamEncoding::Zstd => "zstd",
            StreamEncoding::Unknown(_) => "unknown",
        }
    }
}

/// What one side of a stream moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// QEMU's bytes.
    pub stream_bytes: u64,
    /// Bytes on the mesh.
    pub wire_bytes: u64,
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("the migration stream's {what} stage ended early"))
}

/// Reads `r` in chunks of at most [`CHUNK`] into `tx` until its end; returns the bytes read.
/// With a `window`, reads only while fewer than [`WINDOW`] bytes are beyond what it reports.
async fn read_stage<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
    mut window: Option<tokio::sync::watch::Receiver<u64>>,
) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let mut want = CHUNK;
        if let Some(w) = window.as_mut() {
            let acked = *w
                .wait_for(|&acked| n.saturating_sub(acked) < WINDOW)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the destination's Loaded reports ended"))?;
            want = want.min((WINDOW - n.saturating_sub(acked)) as usize);
        }
        let mut buf = vec![0u8; want];
        let k = r.read(&mut buf).await?;
        if k == 0 {
            return Ok(n);
        }
        n += k as u64;
        buf.truncate(k);
        tx.send(buf).await.map_err(|_| broken("next"))?;
    }
}

/// Writes what arrives on `rx` to `w`, then shuts `w`'s writing side; returns the bytes
/// written. With `written`, publishes the count after every write.
async fn write_stage<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    written: Option<tokio::sync::watch::Sender<u64>>,
) -> io::Result<u64> {
    let mut n = 0u64;
    while let Some(b) = rx.recv().await {
        w.write_all(&b).await?;
        n += b.len() as u64;
        if let Some(p) = &written {
            p.send_replace(n);
        }
    }
    w.shutdown().await?;
    Ok(n)
}

/// What the middle stage does to the chunks: compress or decompress them. Output goes to
/// `emit` in pieces of at most [`CHUNK`] bytes, so that a chunk that decompresses to
/// megabytes (runs of zeros) still queues no more than [`DEPTH`] chunks in front of QEMU.
trait Transform: Send + 'static {
    /// Takes one chunk.
    fn feed(&mut self, chunk: Vec<u8>, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()>;
    /// The last output once the input ended.
    fn end(self, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()>;
}

/// Runs `t` over every chunk on a thread of its own (the (de)compression stage).
fn transform_stage<T: Transform>(
    mut t: T,
    mut rx: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<io::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut emit = |out: Vec<u8>| {
            if out.is_empty() {
                return Ok(());
            }
            tx.blocking_send(out).map_err(|_| broken("writing"))
        };
        while let Some(chunk) = rx.blocking_recv() {
            t.feed(chunk, &mut emit)?;
        }
        t.end(&mut emit)
    })
}

/// Runs the three stages, `t` in the middle; the first error wins (a failed stage drops its
/// channels, which ends the others). The stats count `r`'s bytes as the stream's and `w`'s as
/// the wire's (the receiver swaps them).
async fn pipeline<R, W>(r: R, w: W, t: impl Transform, flow: Flow) -> io::Result<StreamStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (window, written) = match flow {
        Flow::Window(w) => (Some(w), None),
        Flow::Report(p) => (None, Some(p)),
    };
    let (tx_in, rx_in) = mpsc::channel(DEPTH);
    let (tx_out, rx_out) = mpsc::channel(DEPTH);
    let middle = transform_stage(t, rx_in, tx_out);
    let (read, written) = tokio::join!(read_stage(r, tx_in, window), write_stage(w, rx_out, written));
    let middle = middle.await.map_err(|e| io::Error::other(format!("the migration stream's stage: {e}")))?;
    // The stage that failed first tells why; the others saw only a closed channel.
    let (read, written) = match (read, middle, written) {
        (Ok(r), Ok(()), Ok(w)) => (r, w),
        (Err(e), _, _) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
        (_, Err(e), _) => return Err(e),
        (_, _, Err(e)) => return Err(e),
        (Err(e), _, _) => return Err(e),
    };
    Ok(StreamStats { stream_bytes: read, wire_bytes: written })
}

fn unknown(c: u8) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("stream encoding {c}"))
}

/// How a side's pipeline takes part in the flow control over the stream.
enum Flow {
    /// The source: reads QEMU's stream within [`WINDOW`] of the count the destination reports.
    Window(tokio::sync::watch::Receiver<u64>),
    /// The destination: reports the count it has written into its QEMU.
    Report(tokio::sync::watch::Sender<u64>),
}

/// The plain encoding's middle stage: chunks pass as they are.
struct Identity;

impl Transform for Identity {
    fn feed(&mut self, chunk: Vec<u8>, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        emit(chunk)
    }

    fn end(self, _emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        Ok(())
    }
}

/// The source's side: QEMU's stream `qemu` onto the mesh `mesh`, encoded, until QEMU closes
/// it; then `mesh`'s writing side is shut, which tells the destination the stream is whole.
/// `loaded` is the destination's latest `Loaded` count: at most [`WINDOW`] bytes of QEMU's
/// stream are read beyond it. Its sender dropped mid-stream is an error.
pub async fn send<R, W>(
    qemu: R,
    mesh: W,
    encoding: StreamEncoding,
    loaded: tokio::sync::watch::Receiver<u64>,
) -> io::Result<StreamStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flow = Flow::Window(loaded);
    match encoding {
        StreamEncoding::Plain => pipeline(qemu, mesh, Identity, flow).await,
        StreamEncoding::Zstd => pipeline(qemu, mesh, FrameEncoder::new()?, flow).await,
        StreamEncoding::Unknown(c) => Err(unknown(c)),
    }
}

/// A zstd frame made chunk by chunk, each flushed.
struct FrameEncoder(zstd::stream::write::Encoder<'static, Vec<u8>>);

impl FrameEncoder {
    fn new() -> io::Result<Self> {
        Ok(Self(zstd::stream::write::Encoder::new(Vec::with_capacity(CHUNK), ZSTD_LEVEL)?))
    }
}

impl Transform for FrameEncoder {
    fn feed(&mut self, chunk: Vec<u8>, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        use std::io::Write;
        self.0.write_all(&chunk)?;
        self.0.flush()?;
        // zstd never makes a chunk much larger than it was (a stored block's header).
        emit(std::mem::take(self.0.get_mut()))
    }

    fn end(self, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        emit(self.0.finish()?)
    }
}

/// A zstd frame decoded as its pieces arrive.
struct FrameDecoder {
    raw: zstd::stream::raw::Decoder<'static>,
    /// zstd's hint after the last input: 0 once the frame is complete and flushed.
    hint: usize,
}

impl Transform for FrameDecoder {
    fn feed(&mut self, chunk: Vec<u8>, emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut input = &chunk[..];
        loop {
            if self.hint == 0 {
                // The frame is complete and flushed: running zstd again would start a new one.
                if !input.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the end of the zstd frame"));
                }
                return Ok(());
            }
            let mut out: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(&mut out);
            self.hint = self.raw.run(&mut inb, &mut outb)?;
            // A full output buffer may leave output pending inside zstd: run again.
            let full = outb.pos() == outb.capacity();
            input = &input[inb.pos()..];
            emit(out)?;
            if input.is_empty() && !full {
                return Ok(());
            }
        }
    }

    fn end(self, _emit: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        if self.hint != 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the zstd frame of the migration stream was cut"));
        }
        Ok(())
    }
}

/// The destination's side: the mesh stream `mesh`, decoded, into QEMU's socket `qemu` until
/// the source shuts its side; then `qemu`'s writing side is shut. `loaded` gets the count of
/// bytes written into `qemu` after every write (what `Loaded` reports). A zstd stream that does
/// not decode or that ends inside its frame is an error: QEMU never sees a cut stream end
/// cleanly.
pub async fn receive<R, W>(
    mesh: R,
    qemu: W,
    encoding: StreamEncoding,
    loaded: tokio::sync::watch::Sender<u64>,
) -> io::Result<StreamStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flow = Flow::Report(loaded);
    match encoding {
        StreamEncoding::Plain => pipeline(mesh, qemu, Identity, flow).await,
        StreamEncoding::Zstd => {
            let decoder = FrameDecoder { raw: zstd::stream::raw::Decoder::new()?, hint: 1 };
            let s = pipeline(mesh, qemu, decoder, flow).await?;
            Ok(StreamStats { stream_bytes: s.wire_bytes, wire_bytes: s.stream_bytes })
        }
        StreamEncoding::Unknown(c) => Err(unknown(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something like QEMU's stream: page headers, runs of zeros, text, and noise that does
    /// not compress.
    fn stream(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for page in 0usize.. {
            if v.len() >= len {
                break;
            }
            v.extend_from_slice(b"\x00\x00\x00\x00\x00\x10\x00\x08");
            match page % 3 {
                0 => v.extend(std::iter::repeat_n(0u8, 4096)),
                1 => v.extend(b"a page of the guest's kernel text ".iter().cycle().take(4096)),
                _ => {
                    for _ in 0..512 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        v.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        v.truncate(len);
        v
    }

    async fn through(data: &[u8], encoding: StreamEncoding) -> (Vec<u8>, StreamStats, StreamStats) {
        let (src_qemu, src_qemu_peer) = tokio::io::duplex(64 << 10);
        let (mesh_a, mesh_b) = tokio::io::duplex(64 << 10);
        let (dst_qemu_peer, dst_qemu) = tokio::io::duplex(64 << 10);
        let data = data.to_vec();
        let feeder = tokio::spawn(async move {
            let mut w = src_qemu_peer;
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let collector = tokio::spawn(async move {
            let mut r = dst_qemu;
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        });
        let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(0u64);
        let (sent, got) = tokio::join!(
            send(src_qemu, mesh_a, encoding, loaded_rx),
            receive(mesh_b, dst_qemu_peer, encoding, loaded_tx)
        );
        feeder.await.unwrap();
        (collector.await.unwrap(), sent.unwrap(), got.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_encodings_carry_the_stream_byte_for_byte() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17, 5 << 20] {
            let data = stream(len);
            for enc in [StreamEncoding::Plain, StreamEncoding::Zstd] {
                let (out, sent, got) = through(&data, enc).await;
                assert!(out == data, "{enc:?} {len}: {} bytes out", out.len());
                assert_eq!(sent.stream_bytes, len as u64);
                assert_eq!(got.stream_bytes, len as u64);
                assert_eq!(sent.wire_bytes, got.wire_bytes, "{enc:?} {len}");
                if enc == StreamEncoding::Plain {
                    assert_eq!(sent.wire_bytes, len as u64);
                }
            }
        }
        // Two thirds of this stream compress well.
        let (_, sent, _) = through(&stream(5 << 20), StreamEncoding::Zstd).await;
        assert!(sent.wire_bytes * 2 < sent.stream_bytes, "{sent:?}");
    }

    async fn receive_bytes(wire: Vec<u8>) -> io::Result<Vec<u8>> {
        let (dst_qemu_peer, mut dst_qemu) = tokio::io::duplex(64 << 10);
        let collector = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = dst_qemu.read_to_end(&mut out).await;
            out
        });
        receive(&wire[..], dst_qemu_peer, StreamEncoding::Zstd, tokio::sync::watch::channel(0).0).await?;
        Ok(collector.await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_or_corrupt_or_overlong_zstd_stream_is_an_error() {
        let data = stream(1 << 20);
        let whole = zstd::encode_all(&data[..], ZSTD_LEVEL).unwrap();
        assert_eq!(receive_bytes(whole.clone()).await.unwrap(), data);
        for cut in [0, 1, 4, whole.len() / 2, whole.len() - 1] {
            let e = receive_bytes(whole[..cut].to_vec()).await;
            // An empty stream is a cut frame too: QEMU must not see a clean end.
            assert!(e.is_err(), "cut at {cut} of {} was accepted", whole.len());
        }
        let mut bad = whole.clone();
        bad[0] ^= 0xFF;
        assert!(receive_bytes(bad).await.is_err(), "a bad magic was accepted");
        let mut longer = whole.clone();
        longer.extend_from_slice(b"more");
        assert!(receive_bytes(longer).await.is_err(), "bytes after the frame were accepted");
    }

    /// Reads what arrives on `r` for a while; returns the count.
    async fn arrived<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> usize {
        let mut n = 0;
        let mut chunk = vec![0u8; 64 << 10];
        while let Ok(Ok(k)) = tokio::time::timeout(std::time::Duration::from_millis(200), r.read(&mut chunk)).await {
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
            n += k;
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_source_keeps_at_most_a_window_beyond_what_the_destination_loaded() {
        let data = stream(3 * WINDOW as usize + 5);
        let (mut src_qemu_peer, src_qemu) = tokio::io::duplex(64 << 10);
        let (mesh_a, mut mesh_b) = tokio::io::duplex(4 << 20);
        let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(0u64);
        let feed = data.clone();
        let feeder = tokio::spawn(async move {
            let _ = src_qemu_peer.write_all(&feed).await;
        });
        let sender = tokio::spawn(send(src_qemu, mesh_a, StreamEncoding::Plain, loaded_rx));
        let mut got = Vec::new();
        assert_eq!(arrived(&mut mesh_b, &mut got).await, WINDOW as usize, "nothing loaded: one window");
        loaded_tx.send_replace(WINDOW / 2);
        assert_eq!(arrived(&mut mesh_b, &mut got).await, WINDOW as usize / 2);
        loaded_tx.send_replace(2 * WINDOW);
        assert_eq!(arrived(&mut mesh_b, &mut got).await, 3 * WINDOW as usize / 2);
        assert!(got[..] == data[..got.len()], "the bytes that passed are the stream's");
        // The destination's reports ending before the stream did is an error, not a stall.
        drop(loaded_tx);
        let e = sender.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        feeder.abort();
    }

    #[test]
    fn decoded_output_comes_in_chunks() {
        // 8 MiB of zeros are a few hundred bytes of zstd; decoded they still queue as chunks.
        let wire = zstd::encode_all(&vec![0u8; 8 << 20][..], ZSTD_LEVEL).unwrap();
        assert!(wire.len() < CHUNK);
        let mut d = FrameDecoder { raw: zstd::stream::raw::Decoder::new().unwrap(), hint: 1 };
        let mut pieces = Vec::new();
        d.feed(wire, &mut |p| {
            pieces.push(p.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces.iter().sum::<usize>(), 8 << 20);
        assert!(pieces.iter().all(|&p| p <= CHUNK), "{pieces:?}");
        d.end(&mut |_| Ok(())).unwrap();
    }

    #[test]
    fn codes_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(StreamEncoding::from_code(c).code(), c);
        }
        assert_eq!(StreamEncoding::from_code(1), StreamEncoding::Zstd);
        assert_eq!(StreamEncoding::from_code(7), StreamEncoding::Unknown(7));
    }
}
