//! A connection's inbound WebSocket frames: decoding, limits, and the close code of each
//! protocol error (RFC 6455); and the answers to the client's pings.
//!
//! actix-ws's `MessageStream` reports different failures as one `ProtocolError::Io`
//! (reserved bits, invalid UTF-8, a fragmented message over the size limit, a transport
//! error), so they could not be told apart to close with the right code; it buffers a
//! frame whole before it looks at the frame's announced size; and it drains everything the
//! socket has into a queue of decoded frames. So the frames are decoded here, with
//! actix-http's codec (header, masking, opcodes, control-frame rules, close payloads), and:
//!
//! - a frame's header is checked as soon as it is there: reserved bits (no extension is
//!   ever negotiated) → 1002; a data frame, or the fragment of a message, that would take
//!   the message over the limit → 1009 before its payload is read; a control frame over
//!   125 bytes → 1002;
//! - fragments are reassembled up to the same limit, control frames between them are
//!   passed on at once, and a text message's UTF-8 is checked fragment by fragment (an
//!   invalid sequence closes 1007 without waiting for the end of the message);
//! - one frame is decoded at a time, and the socket is read only when no whole frame is
//!   buffered: what a connection holds is at most one frame, one message being
//!   reassembled, and one read; nothing while idle.

use std::sync::{Arc, Mutex};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item};
use actix_ws::{CloseCode, CloseReason, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;

use super::outbox::{Out, OutTx};

/// A whole message or a control frame from the client.
#[derive(Debug)]
pub enum Inbound {
    Text(ByteString),
    /// Read by the echo route (feature `autobahn`); `/ws` refuses binary frames.
    #[cfg_attr(not(feature = "autobahn"), allow(dead_code))]
    Binary(Bytes),
    /// A ping's payload (at most 125 bytes): answer with a pong that carries it.
    Ping(Bytes),
    Pong,
    /// The client closes; its status code (validated by the codec), if it gave one.
    Close(Option<CloseReason>),
}

/// Why the frames of a connection end in error; each has its close code.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message over {0} bytes")]
    TooBig(usize),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("{0}")]
    Protocol(ProtocolError),
    /// The socket failed: there is nobody to tell.
    #[error("transport: {0}")]
    Transport(String),
}

impl FrameError {
    /// How to close the connection (None: the socket is gone).
    pub fn close_reason(&self) -> Option<CloseReason> {
        let code = match self {
            FrameError::TooBig(_) => CloseCode::Size,
            FrameError::InvalidUtf8 => CloseCode::Invalid,
            FrameError::ReservedBits | FrameError::Protocol(_) => CloseCode::Protocol,
            FrameError::Transport(_) => return None,
        };
        Some(CloseReason {
            code,
            description: Some(self.to_string()),
        })
    }
}

fn codec_error(e: ProtocolError) -> FrameError {
    match e {
        // The header checks find an oversize frame first; this is a length with its top
        // bit set, or one that does not fit in memory at all.
        ProtocolError::Overflow => FrameError::TooBig(usize::MAX),
        // The codec's only I/O error is reserved bits, also caught before it looks.
        ProtocolError::Io(_) => FrameError::ReservedBits,
        // `BadOpCode` from the decoder means a close frame with an invalid status code or
        // a reason that is not UTF-8: 1002 either way (RFC 6455 7.4.1, Autobahn 7.5/7.9).
        other => FrameError::Protocol(other),
    }
}

/// The reply to a client's close frame: its own status code echoed (RFC 6455 5.5.1), or
/// 1000 when it gave none.
pub fn close_reply(theirs: Option<CloseReason>) -> CloseReason {
    CloseReason {
        code: theirs.map_or(CloseCode::Normal, |r| r.code),
        description: None,
    }
}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    data: BytesMut,
    /// Bytes of `data` known to be valid UTF-8 (a sequence cut by a fragment boundary is
    /// checked again with the next fragment).
    checked: usize,
}

/// The frames of one connection, read from its request payload.
pub struct Frames {
    payload: actix_http::Payload,
    buf: BytesMut,
    codec: Codec,
    max: usize,
    partial: Option<Box<Partial>>,
    done: bool,
}

impl Frames {
    /// `max`: the largest message, whole or reassembled from fragments, in bytes.
    pub fn new(payload: actix_http::Payload, max: usize) -> Frames {
        Frames {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max),
            max,
            partial: None,
            done: false,
        }
    }

    /// The next message or control frame; None once the client is gone. After an error or
    /// a close frame nothing more is read. Cancel-safe: nothing is lost when the future is
    /// dropped (its only await is the payload's next chunk).
    pub async fn recv(&mut self) -> Option<Result<Inbound, FrameError>> {
        while !self.done {
            match self.decode() {
                Ok(Some(m)) => {
                    if matches!(m, Inbound::Close(_)) {
                        self.finish();
                    }
                    return Some(Ok(m));
                }
                Ok(None) => {}
                Err(e) => {
                    self.finish();
                    return Some(Err(e));
                }
            }
            match self.payload.next().await {
                Some(Ok(chunk)) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(chunk);
                    } else {
                        self.buf.extend_from_slice(&chunk);
                    }
                }
                Some(Err(e)) => {
                    self.finish();
                    return Some(Err(FrameError::Transport(e.to_string())));
                }
                None => self.finish(),
            }
        }
        None
    }

    fn finish(&mut self) {
        self.done = true;
        self.buf = BytesMut::new();
        self.partial = None;
    }

    /// Decodes what is buffered until a message or control frame is complete.
    fn decode(&mut self) -> Result<Option<Inbound>, FrameError> {
        loop {
            self.check_header()?;
            let Some(frame) = self.codec.decode(&mut self.buf).map_err(codec_error)? else {
                if self.buf.is_empty() {
                    // Keep no buffer while idle.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let msg = match frame {
                Frame::Text(b) => {
                    Inbound::Text(ByteString::try_from(b).map_err(|_| FrameError::InvalidUtf8)?)
                }
                Frame::Binary(b) => Inbound::Binary(b),
                Frame::Ping(b) => Inbound::Ping(b),
                Frame::Pong(_) => Inbound::Pong,
                Frame::Close(r) => Inbound::Close(r),
                Frame::Continuation(item) => match self.fragment(item)? {
                    Some(m) => m,
                    None => continue,
                },
            };
            return Ok(Some(msg));
        }
    }

    /// Refuses the next frame on its header alone, before its payload is buffered.
    fn check_header(&self) -> Result<(), FrameError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(());
        }
        if b[0] & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let len = match b[1] & 0x7f {
            126 if b.len() >= 4 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            127 if b.len() >= 10 => {
                u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]])
            }
            126 | 127 => return Ok(()),
            n => u64::from(n),
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if b[0] & 0x08 != 0 {
            // Control frames: the codec refuses these too, but only once they are whole.
            if len > 125 {
                return Err(FrameError::Protocol(ProtocolError::InvalidLength(len)));
            }
        } else {
            let so_far = match (&self.partial, b[0] & 0x0f) {
                (Some(p), 0) => p.data.len(),
                _ => 0,
            };
            if len > self.max.saturating_sub(so_far) {
                return Err(FrameError::TooBig(self.max));
            }
        }
        Ok(())
    }

    fn start(&mut self, text: bool) {
        self.partial = Some(Box::new(Partial {
            text,
            data: BytesMut::new(),
            checked: 0,
        }));
    }

    /// Adds a fragment to the message being reassembled; the message once it is whole.
    fn fragment(&mut self, item: Item) -> Result<Option<Inbound>, FrameError> {
        let (bytes, last) = match item {
            Item::FirstText(b) => {
                self.start(true);
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.start(false);
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let max = self.max;
        // The codec refuses a continuation that starts nothing; this cannot be None.
        let p = self
            .partial
            .as_mut()
            .ok_or(FrameError::Protocol(ProtocolError::ContinuationNotStarted))?;
        if p.data.len() + bytes.len() > max {
            return Err(FrameError::TooBig(max));
        }
        p.data.extend_from_slice(&bytes);
        if p.text {
            match std::str::from_utf8(&p.data[p.checked..]) {
                Ok(_) => p.checked = p.data.len(),
                // A sequence cut at the end of this fragment: checked with the next one.
                Err(e) if e.error_len().is_none() && !last => p.checked += e.valid_up_to(),
                Err(_) => return Err(FrameError::InvalidUtf8),
            }
        }
        if !last {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Ok(None);
        };
        let data = p.data.freeze();
        Ok(Some(if p.text {
            Inbound::Text(ByteString::try_from(data).map_err(|_| FrameError::InvalidUtf8)?)
        } else {
            Inbound::Binary(data)
        }))
    }
}

/// The answer to a connection's pings, shared by the session (which reads the pings) and the
/// writer (which owns the socket's sending side): the payload of the latest ping not yet
/// answered. At most one pong is queued per connection whatever the client sends (RFC 6455
/// 5.5.3 lets an endpoint answer only the most recent ping), so a ping flood costs one slot.
#[derive(Debug, Default)]
pub struct PongSlot(Mutex<Option<Box<[u8]>>>);

impl PongSlot {
    /// Keeps `payload` as the one to answer; true if no pong was pending (queue one).
    fn put(&self, payload: &[u8]) -> bool {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.replace(payload.into()).is_none()
    }

    /// The payload to send now (None: answered already).
    pub fn take(&self) -> Option<Box<[u8]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A connection's side of its [`PongSlot`], allocated with the first ping.
#[derive(Default)]
pub struct Pongs(Option<Arc<PongSlot>>);

impl Pongs {
    /// Answers a ping through the connection's outbox. When the outbox is full the pong is
    /// dropped (a later ping is answered); the client is not reading anyway.
    pub fn answer(&mut self, out: &OutTx, payload: &[u8]) {
        let slot = self.0.get_or_insert_with(Default::default);
        if slot.put(payload) && out.try_send(Out::Pong(slot.clone())).is_err() {
            slot.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Frames over the given chunks of bytes (then the end of the input).
    fn frames(chunks: Vec<Vec<u8>>, max: usize) -> Frames {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, actix_http::error::PayloadError>(Bytes::from(c))),
        );
        let stream: actix_http::BoxedPayloadStream = Box::pin(stream);
        Frames::new(actix_http::Payload::from(stream), max)
    }

    async fn all(mut f: Frames) -> Vec<Result<Inbound, FrameError>> {
        let mut out = Vec::new();
        while let Some(m) = f.recv().await {
            out.push(m);
        }
        out
    }

    fn code(r: &Result<Inbound, FrameError>) -> Option<u16> {
        match r {
            Err(e) => e.close_reason().map(|r| r.code.into()),
            Ok(_) => None,
        }
    }

    #[tokio::test]
    async fn fragments_are_joined_and_control_frames_pass_between() {
        let input = [
            frame(0x01, b"h\xc3"), // text, not final, a character cut in two
            frame(0x89, b"p"),     // ping between fragments
            frame(0x00, b"\xa4l"),
            frame(0x80, b"lo"),
        ]
        .concat();
        let got = all(frames(vec![input], 1024)).await;
        assert!(matches!(&got[0], Ok(Inbound::Ping(p)) if &p[..] == b"p"));
        assert!(matches!(&got[1], Ok(Inbound::Text(t)) if &t[..] == "hällo"));
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn each_error_has_its_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(0x81 | 0x40, b"x"), 1002),     // RSV1
            (frame(0x83, b"x"), 1002),            // reserved opcode
            (frame(0x81, b"\xff"), 1007),         // invalid UTF-8
            (frame(0x01, b"\xed\xa0\x80"), 1007), // invalid, first fragment
            (frame(0x81, &[b'a'; 200]), 1009),    // over the limit
            (frame(0x80, b"x"), 1002),            // continuation, no start
            (
                [frame(0x01, &[b'a'; 60]), frame(0x80, &[b'b'; 60])].concat(),
                1009,
            ),
            (frame(0x89, &[0; 126]), 1002), // control frame over 125
            (frame(0x09, b"x"), 1002),      // fragmented ping
            ([frame(0x01, b"a"), frame(0x81, b"b")].concat(), 1002), // new message inside one
        ];
        for (input, want) in cases {
            let got = all(frames(vec![input.clone()], 100)).await;
            assert_eq!(got.len(), 1, "{input:x?}: {got:?}");
            assert_eq!(code(&got[0]), Some(want), "{input:x?}: {got:?}");
        }
    }

    #[tokio::test]
    async fn an_oversize_frame_is_refused_on_its_header() {
        // 1 GiB announced, nothing of it sent: refused at once, without waiting for it.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let got = all(frames(vec![header], 64 * 1024)).await;
        assert_eq!(code(&got[0]), Some(1009));
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_a_close() {
        let input = [frame(0x81, b"hello"), frame(0x88, &1000u16.to_be_bytes())].concat();
        let chunks = input.iter().map(|b| vec![*b]).collect();
        let got = all(frames(chunks, 1024)).await;
        assert!(matches!(&got[0], Ok(Inbound::Text(t)) if &t[..] == "hello"));
        assert!(matches!(&got[1], Ok(Inbound::Close(Some(r))) if r.code == CloseCode::Normal));
        assert_eq!(got.len(), 2, "nothing is read after a close");
    }

    #[test]
    fn the_pong_slot_answers_the_latest_ping_once() {
        let (tx, rx) = super::super::outbox::channel(4, 1 << 20);
        let mut pongs = Pongs::default();
        pongs.answer(&tx, b"one");
        pongs.answer(&tx, b"two");
        let Ok(Out::Pong(slot)) = rx.try_recv() else {
            panic!("a pong queued")
        };
        assert!(rx.try_recv().is_err(), "one pong queued for two pings");
        assert_eq!(slot.take().as_deref(), Some(&b"two"[..]));
        pongs.answer(&tx, b"three");
        assert!(matches!(rx.try_recv(), Ok(Out::Pong(_))));
    }
}
