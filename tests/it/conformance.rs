//! WebSocket conformance of `/ws` (RFC 6455), with the raw client of `rawws.rs`: pings
//! answered with their payload (before and after hello, and under a flood), fragments
//! reassembled with control frames between them, and each protocol error closed with its
//! code. The Autobahn suite covers the same ground more widely (scripts/autobahn.sh).

use std::time::Duration;

use serde_json::json;

use crate::both_modes;
use crate::harness::{Account, Env, Http, Mode, Proc};
use crate::rawws::{Closed, RawWs, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};

const T: Duration = Duration::from_secs(10);

/// A connection past `hello`.
async fn authed(gw: &Proc, who: &Account) -> RawWs {
    let mut ws = RawWs::connect(&gw.addr, "/ws").await;
    ws.text(&json!({"type": "hello", "token": who.token}).to_string())
        .await;
    ws.expect_json("welcome", T).await;
    ws
}

both_modes!(pings_are_answered_with_their_payload);
async fn pings_are_answered_with_their_payload(mode: Mode) {
    let env = Env::with_mode("pings", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let alice = Http::new(gw).register("alice").await;

    // Before hello: answered, and the hello that follows still counts.
    let mut ws = RawWs::connect(&gw.addr, "/ws").await;
    ws.frame(true, PING, b"before hello").await;
    let pong = ws.expect(PONG, T).await.expect("a pong before hello");
    assert_eq!(pong.payload, b"before hello");
    ws.frame(true, PONG, b"unsolicited").await;
    ws.text(&json!({"type": "hello", "token": alice.token}).to_string())
        .await;
    ws.expect_json("welcome", T).await;

    // After hello: each payload comes back, up to the 125 bytes a control frame holds.
    for payload in [&b""[..], b"x", &[0xab; 125]] {
        ws.frame(true, PING, payload).await;
        let pong = ws.expect(PONG, T).await.expect("a pong");
        assert_eq!(pong.payload, payload);
    }

    // A flood read by nobody meanwhile: at most one pong waits per connection, the latest
    // ping is the one answered, and the session goes on.
    const FLOOD: usize = 5_000;
    for i in 0..FLOOD {
        ws.frame(true, PING, format!("p{i}").as_bytes()).await;
    }
    ws.text(r#"{"type":"ping"}"#).await;
    let mut pongs = Vec::new();
    loop {
        let f = ws.read_frame(T).await.expect("frames after the flood");
        match f.opcode {
            PONG => pongs.push(f.text()),
            TEXT if f.text().contains(r#""pong""#) => break,
            _ => {}
        }
    }
    assert!(
        !pongs.is_empty() && pongs.len() <= FLOOD,
        "{} pongs",
        pongs.len()
    );
    assert_eq!(pongs.last().map(String::as_str), Some("p4999"));
}

both_modes!(fragments_are_reassembled_with_control_frames_between);
async fn fragments_are_reassembled_with_control_frames_between(mode: Mode) {
    let env = Env::with_mode("fragments", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let alice = Http::new(gw).register("alice").await;

    // A hello in three fragments.
    let mut ws = RawWs::connect(&gw.addr, "/ws").await;
    let hello = json!({"type": "hello", "token": alice.token}).to_string();
    let (a, rest) = hello.as_bytes().split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    ws.frame(false, TEXT, a).await;
    ws.frame(false, CONTINUATION, b).await;
    ws.frame(true, CONTINUATION, c).await;
    ws.expect_json("welcome", T).await;

    // A two-byte character cut by a fragment boundary, and a ping between the fragments,
    // answered before the message is complete.
    ws.frame(false, TEXT, b"{\"type\":\"d\xc3").await;
    ws.frame(true, PING, b"between").await;
    let pong = ws
        .expect(PONG, T)
        .await
        .expect("the ping between fragments");
    assert_eq!(pong.payload, b"between");
    ws.frame(false, CONTINUATION, b"\xa4n").await;
    ws.frame(true, CONTINUATION, b"ce\"}").await;
    let e = ws.expect_json("error", T).await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("unknown_type"), Some("dänce"))
    );

    // A message of exactly the limit (64 KiB) in fragments is taken.
    let pad = "x".repeat(64 * 1024 - r#"{"type":"ping","pad":""}"#.len());
    let big = format!(r#"{{"type":"ping","pad":"{pad}"}}"#);
    assert_eq!(big.len(), 64 * 1024);
    for (i, chunk) in big.as_bytes().chunks(10_000).enumerate() {
        let last = (i + 1) * 10_000 >= big.len();
        let op = if i == 0 { TEXT } else { CONTINUATION };
        ws.frame(last, op, chunk).await;
    }
    ws.expect_json("pong", T).await;
}

/// A way to break the protocol, and the close code it must get.
#[derive(Debug, Clone, Copy)]
enum Bad {
    ReservedBits,
    ReservedOpcode,
    InvalidUtf8,
    InvalidUtf8InFirstFragment,
    OversizeFrame,
    OversizeAnnouncedOnly,
    OversizeInFragments,
    ContinuationWithoutStart,
    NewMessageInsideFragmented,
    Unmasked,
    LongPing,
    FragmentedPing,
    InvalidCloseCode,
    Binary,
}

impl Bad {
    fn code(self) -> u16 {
        match self {
            Bad::InvalidUtf8 | Bad::InvalidUtf8InFirstFragment => 1007,
            Bad::OversizeFrame | Bad::OversizeAnnouncedOnly | Bad::OversizeInFragments => 1009,
            Bad::Binary => 1003,
            _ => 1002,
        }
    }

    async fn send(self, ws: &mut RawWs) {
        let ping = br#"{"type":"ping"}"#;
        match self {
            Bad::ReservedBits => ws.frame_raw(0x80 | 0x40 | TEXT, true, ping).await,
            Bad::ReservedOpcode => ws.frame_raw(0x80 | 0x3, true, ping).await,
            Bad::InvalidUtf8 => ws.frame(true, TEXT, b"{\"type\":\"\xff\xfe\"}").await,
            // Never finished: found without waiting for the end of the message.
            Bad::InvalidUtf8InFirstFragment => ws.frame(false, TEXT, b"ok \xed\xa0\x80").await,
            Bad::OversizeFrame => ws.frame(true, TEXT, &[b'z'; 70 * 1024]).await,
            // 1 GiB announced, nothing sent: refused on the header alone.
            Bad::OversizeAnnouncedOnly => ws.header_only(0x80 | TEXT, 1 << 30).await,
            Bad::OversizeInFragments => {
                ws.frame(false, TEXT, &[b'a'; 40 * 1024]).await;
                ws.frame(true, CONTINUATION, &[b'b'; 40 * 1024]).await;
            }
            Bad::ContinuationWithoutStart => ws.frame(true, CONTINUATION, ping).await,
            Bad::NewMessageInsideFragmented => {
                ws.frame(false, TEXT, b"{\"type\":").await;
                ws.frame(true, TEXT, ping).await;
            }
            Bad::Unmasked => ws.frame_raw(0x80 | TEXT, false, ping).await,
            Bad::LongPing => ws.frame(true, PING, &[1; 126]).await,
            Bad::FragmentedPing => ws.frame(false, PING, b"x").await,
            Bad::InvalidCloseCode => ws.frame(true, CLOSE, &1005u16.to_be_bytes()).await,
            Bad::Binary => ws.frame(true, BINARY, b"\x00\x01").await,
        }
    }
}

both_modes!(protocol_errors_and_the_close_handshake_have_their_codes);
async fn protocol_errors_and_the_close_handshake_have_their_codes(mode: Mode) {
    let env = Env::with_mode("closecodes", mode).await;
    let chat = env.start(1).await;
    let gw = chat.gw(0);
    let alice = Http::new(gw).register("alice").await;

    let all = [
        Bad::ReservedBits,
        Bad::ReservedOpcode,
        Bad::InvalidUtf8,
        Bad::InvalidUtf8InFirstFragment,
        Bad::OversizeFrame,
        Bad::OversizeAnnouncedOnly,
        Bad::OversizeInFragments,
        Bad::ContinuationWithoutStart,
        Bad::NewMessageInsideFragmented,
        Bad::Unmasked,
        Bad::LongPing,
        Bad::FragmentedPing,
        Bad::InvalidCloseCode,
        Bad::Binary,
    ];
    let mut wrong = Vec::new();
    for bad in all {
        let mut ws = authed(gw, &alice).await;
        bad.send(&mut ws).await;
        let got = ws.closed(T).await;
        if got != Closed::Code(bad.code()) {
            wrong.push(format!("{bad:?}: {got:?}, want {}", bad.code()));
        } else if !ws.eof(T).await {
            wrong.push(format!(
                "{bad:?}: the connection stayed open after the close"
            ));
        }
    }
    // Before hello the framing rules are the same (a binary frame is not a hello: 4401).
    for bad in [
        Bad::ReservedBits,
        Bad::InvalidUtf8,
        Bad::OversizeInFragments,
        Bad::Binary,
    ] {
        let mut ws = RawWs::connect(&gw.addr, "/ws").await;
        bad.send(&mut ws).await;
        let want = if matches!(bad, Bad::Binary) {
            4401
        } else {
            bad.code()
        };
        let got = ws.closed(T).await;
        if got != Closed::Code(want) {
            wrong.push(format!("before hello, {bad:?}: {got:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The close handshake: the client's code echoed, then the server ends the connection.
    for (code, want) in [(1000, 1000), (1001, 1001), (4000, 4000)] {
        let mut ws = authed(gw, &alice).await;
        ws.close(code, "bye").await;
        assert_eq!(ws.closed(T).await, Closed::Code(want), "close {code}");
        assert!(ws.eof(T).await, "connection ended after close {code}");
    }
    let mut ws = authed(gw, &alice).await;
    ws.frame(true, CLOSE, b"").await;
    assert_eq!(ws.closed(T).await, Closed::Code(1000), "empty close");
    // Before hello too (it used to be answered 4401).
    let mut ws = RawWs::connect(&gw.addr, "/ws").await;
    ws.close(1001, "going").await;
    assert_eq!(ws.closed(T).await, Closed::Code(1001), "close before hello");
}
