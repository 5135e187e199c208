//! A blocking client: one request at a time, for command-line tools and tests. It can also send
//! raw bytes, which the conformance suite uses to feed a TCB garbage.

use crate::{ClientError, check_response, encode_request_stream};
use ppn_wire::stream::Deframer;
use ppn_wire::{Request, Response};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A blocking connection to a TCB.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    deframer: Box<Deframer>,
    buf: Vec<u8>,
    /// Bytes read but not yet deframed: `buf[start..end]`.
    start: usize,
    end: usize,
    next_id: u32,
}

impl Client {
    /// Connects, with `timeout` on every read and write.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream, deframer: Box::new(Deframer::new()), buf: vec![0; 64 * 1024], start: 0, end: 0, next_id: 1 })
    }

    /// Sends `request` and returns its response; error frames become [`ClientError::Tcb`].
    /// Responses to other request ids (answers to raw bytes sent earlier) are skipped.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.stream.write_all(&encode_request_stream(id, request)?)?;
        loop {
            let (got, response) = self.recv()?;
            if got == id {
                return check_response(request, response);
            }
        }
    }

    /// Writes raw bytes to the TCB.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next response frame: its request id and the decoded response.
    pub fn recv(&mut self) -> Result<(u32, Response), ClientError> {
        loop {
            while self.start < self.end {
                let (used, event) = self.deframer.push(&self.buf[self.start..self.end]);
                self.start += used;
                match event {
                    None => {}
                    Some(Ok(frame)) => return Ok(ppn_wire::decode_response(frame)?),
                    Some(Err(e)) => return Err(e.into()),
                }
            }
            let n = self.stream.read(&mut self.buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ClientError::Timeout(self.stream.read_timeout().ok().flatten().unwrap_or_default())
                }
                _ => ClientError::Io(e),
            })?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.start = 0;
            self.end = n;
        }
    }

    /// Shuts the writing half, telling the TCB no more requests come.
    pub fn shutdown_write(&self) -> Result<(), ClientError> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }
}
