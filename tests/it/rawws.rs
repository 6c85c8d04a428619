//! A low-level WebSocket client for the framing tests: the HTTP upgrade by hand, then frames
//! written byte for byte (masked, as a client must, unless a test says otherwise), so a test
//! can send what no well-behaved library would: reserved bits, bad opcodes, fragments out of
//! order, invalid UTF-8, lengths announced and never sent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What the server's close frame said, or that the connection ended without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code (1005 when it had none).
    Code(u16),
    /// EOF or reset without a close frame.
    Dropped,
    /// Nothing within the time given.
    Timeout,
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    mask: [u8; 4],
}

impl RawWs {
    /// Opens `path` on `addr` (host:port) and completes the upgrade.
    pub async fn connect(addr: &str, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .expect("upgrade request");
        let mut buf = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("upgrade answer");
                assert!(n > 0, "closed before answering the upgrade");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("upgrade answered within 10 s");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..end);
        RawWs {
            stream,
            buf,
            mask: [0x37, 0xfa, 0x21, 0x3d],
        }
    }

    /// Writes one frame: `first` is FIN, RSV1-3 and the opcode (e.g. `0x80 | TEXT`).
    pub async fn frame_raw(&mut self, first: u8, masked: bool, payload: &[u8]) {
        let mut f = vec![first];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&self.mask);
            f.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.mask[i % 4]),
            );
        } else {
            f.extend_from_slice(payload);
        }
        // The server may have closed already (that is what some tests wait for).
        let _ = self.stream.write_all(&f).await;
    }

    /// Writes a masked frame.
    pub async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let first = if fin { 0x80 } else { 0 } | opcode;
        self.frame_raw(first, true, payload).await;
    }

    /// Writes only a header announcing `len` payload bytes (masked), and no payload.
    pub async fn header_only(&mut self, first: u8, len: u64) {
        let mut f = vec![first, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&self.mask);
        let _ = self.stream.write_all(&f).await;
    }

    pub async fn text(&mut self, s: &str) {
        self.frame(true, TEXT, s.as_bytes()).await;
    }

    pub async fn close(&mut self, code: u16, reason: &str) {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.frame(true, CLOSE, &p).await;
    }

    /// The next frame from the server; None on EOF, error or timeout.
    pub async fn read_frame(&mut self, within: Duration) -> Option<Frame> {
        self.next_frame(tokio::time::Instant::now() + within)
            .await
            .ok()
    }

    async fn next_frame(&mut self, deadline: tokio::time::Instant) -> Result<Frame, Closed> {
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(Closed::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Closed::Dropped),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Skips frames until one with `opcode`; None if the connection ended or time ran out.
    pub async fn expect(&mut self, opcode: u8, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            if f.opcode == opcode {
                return Some(f);
            }
        }
    }

    /// Skips text frames until the JSON frame of `ty`.
    pub async fn expect_json(&mut self, ty: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .expect(TEXT, left)
                .await
                .unwrap_or_else(|| panic!("no `{ty}` frame within {within:?}"));
            let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json frame");
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until the server's close frame (skipping others).
    pub async fn closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.next_frame(deadline).await {
                Ok(f) if f.opcode == CLOSE => {
                    return Closed::Code(match f.payload.as_slice() {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    })
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// True once the server has closed the TCP connection (EOF) within `within`.
    pub async fn eof(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// One unmasked server frame from the front of `b`, and the bytes it took.
fn parse(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "the server masked a frame");
    let (len, mut i) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = b.get(i..i + len)?.to_vec();
    i += len;
    Some((
        Frame {
            fin: b[0] & 0x80 != 0,
            opcode: b[0] & 0x0f,
            payload,
        },
        i,
    ))
}
