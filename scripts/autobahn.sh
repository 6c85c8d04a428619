#!/usr/bin/env bash
# The Autobahn WebSocket test suite (fuzzingclient) against chat's framing layer:
#
#   scripts/autobahn.sh                 set the suite up (once), build, run, summarise
#   scripts/autobahn.sh --cases 'LIST'  only these cases (comma separated, e.g. '5.*,7.1.*')
#
# The suite (PyPI `autobahntestsuite`) is a Python 2.7 program: it is installed into a
# virtualenv under ${CHAT_CACHE:-$HOME/.cache/chat}/autobahn (never in the repo), with Python
# 2.7 from $AUTOBAHN_PYTHON2, `python2.7` on PATH or pyenv (~/.pyenv/versions/2.7*). It cannot
# speak the chat protocol, so `chat` is built with the cargo feature `autobahn` (never in a
# release build or the image), which adds `/autobahn-echo`: the same upgrade, frame decoding and
# limits as `/ws`, echoing each message. Cases run: 1-7, 9 (those within the 64 KiB message
# limit: larger ones are closed 1009 by design) and 10; not 12/13 (compression, never
# negotiated). Exit 0 when no case FAILED, 1 when one did, 3 when there is no Python 2.7.
set -euo pipefail

CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*'
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) CASES="$2"; shift 2 ;;
    -h | --help) sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "scripts/autobahn.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${CHAT_CACHE:-$HOME/.cache/chat}"
AB="$CACHE/autobahn"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$AB"

# ---------------------------------------------------------------------------- Python 2.7
is_py27() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; }
PY2=""
# (A pyenv shim on PATH may not run: 2.7 is installed but not the selected version.)
for c in "${AUTOBAHN_PYTHON2:-}" "$(command -v python2.7 || true)" \
  $(ls -d "$HOME"/.pyenv/versions/2.7*/bin/python 2>/dev/null | sort -rV); do
  if is_py27 "$c"; then PY2="$c"; break; fi
done
if [ -z "$PY2" ]; then
  echo "autobahn: no Python 2.7 found (set AUTOBAHN_PYTHON2); the suite needs one" >&2
  exit 3
fi

# --------------------------------------------------------------------------- the suite
# Every package pinned: the versions that install and run on Python 2.7 (checked 2026-12).
PINS='autobahntestsuite==25.10.1
autobahn==0.10.9
Twisted==19.10.0
txaio==2.1.0
zope.interface==4.6.0
incremental==16.10.1
Automat==22.10.0
attrs==21.4.0
constantly==15.1.0
hyperlink==21.0.0
idna==2.10
PyHamcrest==1.10.1
six==1.16.0
typing==3.10.0.0
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
klein==17.10.0
Werkzeug==1.0.1
Jinja2==2.11.3
MarkupSafe==1.1.1
unittest2==1.1.0
linecache2==1.0.0
traceback2==1.4.0
argparse==1.4.0
wsaccel==0.6.6
ujson==2.0.3
setuptools==44.0.0'
STAMP="$AB/venv/.installed-$(printf '%s' "$PINS" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "autobahn: installing the suite into $AB/venv (Python 2.7: $PY2)"
  rm -rf "$AB/venv" "$AB/bootstrap"
  # virtualenv 20.21 is the last that creates Python 2 environments.
  python3 -m venv "$AB/bootstrap"
  "$AB/bootstrap/bin/pip" install -q --disable-pip-version-check 'virtualenv==20.21.1'
  "$AB/bootstrap/bin/virtualenv" -q -p "$PY2" "$AB/venv"
  printf '%s\n' "$PINS" > "$AB/constraints.txt"
  "$AB/venv/bin/pip" install -q --disable-pip-version-check --no-warn-script-location \
    -c "$AB/constraints.txt" autobahntestsuite 2>&1 | grep -v -i 'deprecation' || true
  "$AB/venv/bin/wstest" --help >/dev/null
  touch "$STAMP"
fi

# ---------------------------------------------------------------------- the echo build
echo "autobahn: cargo build --features autobahn --bin chat"
cargo build -q --features autobahn --bin chat
cp "$CARGO_TARGET_DIR/debug/chat" "$AB/chat-autobahn"
# Put the ordinary binary back where the other tests look for it (cached: no rebuild).
cargo build -q --bin chat

# ------------------------------------------------------------------------------- the run
DATA="$(mktemp -d)"
OUT="$AB/server.out"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT
env -u DATABASE_URL -u REDIS_URL -u KAFKA_BROKERS -u JWT_SECRET RUST_LOG=warn \
  "$AB/chat-autobahn" serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$OUT" 2>"$AB/server.log" &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT="$(sed -n 's#^chat listening on http://127.0.0.1:##p' "$OUT")"
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$AB/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { echo "autobahn: the server did not start" >&2; exit 1; }

rm -rf "$AB/reports"
python3 - "$AB/spec.json" "$AB/reports" "ws://127.0.0.1:$PORT/autobahn-echo" "$CASES" <<'EOF'
import json, sys
spec, outdir, url, cases = sys.argv[1:]
# Over the 64 KiB message limit: closed 1009 by design, not an echo.
over = ["9.1.2", "9.1.3", "9.1.4", "9.1.5", "9.1.6", "9.2.2", "9.2.3", "9.2.4", "9.2.5",
        "9.2.6", "9.3.*", "9.4.*", "9.5.*", "9.6.*", "12.*", "13.*"]
json.dump({"outdir": outdir, "servers": [{"agent": "chat", "url": url}],
           "cases": cases.split(","), "exclude-cases": over, "exclude-agent-cases": {}},
          open(spec, "w"), indent=1)
EOF
echo "autobahn: wstest -m fuzzingclient against $PORT, cases $CASES"
(cd "$AB" && timeout 900 "$AB/venv/bin/wstest" -m fuzzingclient -s "$AB/spec.json" \
  >"$AB/wstest.log" 2>&1) || { tail -n 20 "$AB/wstest.log" >&2; exit 1; }

python3 - "$AB/reports/index.json" <<'EOF'
import collections, json, sys
results = json.load(open(sys.argv[1]))["chat"]
key = lambda c: [int(p) for p in c.split(".")]
by = collections.OrderedDict()
failed = []
for case in sorted(results, key=key):
    r = results[case]
    by.setdefault(case.split(".")[0], collections.Counter())[r["behavior"]] += 1
    if r["behavior"] == "FAILED" or r["behaviorClose"] in ("FAILED", "WRONG CODE", "UNCLEAN"):
        failed.append("%s: %s / close %s" % (case, r["behavior"], r["behaviorClose"]))
    elif r["behavior"] != "OK":
        print("  %-8s %s (close %s)" % (case, r["behavior"], r["behaviorClose"]))
kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
print("section  " + "  ".join("%13s" % k for k in kinds))
total = collections.Counter()
for s, c in by.items():
    total.update(c)
    print("%-7s  " % s + "  ".join("%13d" % c[k] for k in kinds))
print("all      " + "  ".join("%13d" % total[k] for k in kinds))
for f in failed:
    print("FAILED " + f)
print("autobahn: %d passed, %d failed" % (sum(total.values()) - len(failed), len(failed)))
sys.exit(1 if failed else 0)
EOF
