"""A standard client library's protocol keepalive against /ws: Python `websockets` with its
defaults (a ping every 20 s, the connection dropped when a pong takes over 20 s) stays
connected through 65 s of quiet, longer than the server's 60 s idle timeout, and still gets
the room's messages. Before the server answered pings, this client dropped the connection
(1011, keepalive ping timeout) after about 40 s.

Runs the built binary ($CHAT_BIN, else $CARGO_TARGET_DIR/debug/chat) in the embedded mode
(no services). scripts/test.sh sets up the virtualenv and runs it.
"""

import asyncio
import json
import os
import pathlib
import subprocess
import tempfile
import urllib.request
import uuid

import pytest
from websockets.asyncio.client import connect

QUIET_SECONDS = 65
PASSWORD = "correct horse battery"


def chat_bin():
    candidates = [
        os.environ.get("CHAT_BIN"),
        os.environ.get("CARGO_TARGET_DIR") and os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "chat"),
        os.path.join(pathlib.Path.home(), ".cache", "chat", "target", "debug", "chat"),
    ]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise RuntimeError("set CHAT_BIN to the built chat binary (cargo build --bins)")


@pytest.fixture
def server():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET", "DATA_DIR")}
    env["RUST_LOG"] = "info"
    with tempfile.TemporaryDirectory(prefix="chat-clients-") as data:
        log = open(os.path.join(data, "server.log"), "w")
        proc = subprocess.Popen(
            [chat_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        try:
            addr = None
            for line in proc.stdout:
                if line.startswith("chat listening on http://"):
                    addr = line.strip().removeprefix("chat listening on http://")
                    break
            assert addr, "the server exited before listening"
            yield addr
        finally:
            proc.kill()
            proc.wait(timeout=10)
            log.close()


def api(addr, method, path, body=None, token=None):
    req = urllib.request.Request(f"http://{addr}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
        return json.loads(text) if text else None


def register(addr, prefix):
    return api(addr, "POST", "/api/register",
               {"username": f"{prefix}{uuid.uuid4().hex[:8]}", "password": PASSWORD})


async def frame_of(ws, ty, within=15):
    """The next JSON frame of type `ty` (others skipped)."""
    async def wait():
        while True:
            v = json.loads(await ws.recv())
            if v.get("type") == ty:
                return v
            assert v.get("type") != "error", v
    return await asyncio.wait_for(wait(), within)


async def keepalive(addr):
    alice = register(addr, "alice")
    bob = register(addr, "bob")
    room = api(addr, "POST", "/api/rooms", {"name": f"quiet-{uuid.uuid4().hex[:6]}"}, alice["token"])["id"]
    api(addr, "POST", f"/api/rooms/{room}/join", token=bob["token"])

    # The library's defaults: ping_interval=20, ping_timeout=20.
    async with connect(f"ws://{addr}/ws", proxy=None) as a:
        await a.send(json.dumps({"type": "hello", "token": alice["token"]}))
        await frame_of(a, "welcome")
        await a.send(json.dumps({"type": "subscribe", "room": room, "since": None}))
        await frame_of(a, "subscribed")

        await asyncio.sleep(QUIET_SECONDS)

        # Still open: no close frame, and the library has measured the latency of a pong.
        assert a.close_code is None, f"closed {a.close_code} {a.close_reason}"
        assert a.latency > 0, "no pong answered the library's keepalive pings"

        async with connect(f"ws://{addr}/ws", proxy=None) as b:
            await b.send(json.dumps({"type": "hello", "token": bob["token"]}))
            await frame_of(b, "welcome")
            await b.send(json.dumps({"type": "send", "room": room, "client_msg_id": "k1",
                                     "body": "still there?"}))
            await frame_of(b, "ack")

        got = await frame_of(a, "message")
        assert got["message"]["body"] == "still there?"
        assert a.close_code is None


def test_websockets_keepalive_survives_65s_of_quiet(server):
    asyncio.run(keepalive(server))
