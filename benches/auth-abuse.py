"""Measures login abuse against a chat binary (embedded mode, its default limits unless given):
guesses per second for one account, and an honest login's wait under a flood of 400 bogus ones (issue 15, item 4).
usage: python3 benches/auth-abuse.py BIN [extra serve flags...]
  e.g. python3 benches/auth-abuse.py ~/.cache/chat/target/debug/chat
       python3 benches/auth-abuse.py BIN --login-rate-per-address 100000 --login-burst-per-address 100000"""
import http.client, json, os, shutil, subprocess, sys, tempfile, threading, time, uuid, statistics

BIN = sys.argv[1]; EXTRA = sys.argv[2:]
data = tempfile.mkdtemp(prefix="measure-")
env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET", "DATA_DIR")}
env["RUST_LOG"] = "warn"
proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", data] + EXTRA,
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
addr = None
for line in proc.stdout:
    if line.startswith("chat listening on http://"):
        addr = line.strip().split("http://")[1]; break
host, port = addr.rsplit(":", 1); port = int(port)

def post(path, body, src="127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=120, source_address=(src, 0))
    c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    return r.status

try:
    time.sleep(1)
    victim = "victim" + uuid.uuid4().hex[:8]
    honest = "honest" + uuid.uuid4().hex[:8]
    assert post("/api/register", {"username": victim, "password": "correct horse battery"}, "127.0.0.3") == 201
    assert post("/api/register", {"username": honest, "password": "correct horse battery"}, "127.0.0.3") == 201
    # 1. 100 wrong passwords for one account, one after another.
    t = time.time(); statuses = []
    for i in range(100):
        statuses.append(post("/api/login", {"username": victim, "password": f"guess{i:04}xx"}))
    el = time.time() - t
    guesses = statuses.count(401)
    first429 = statuses.index(429) + 1 if 429 in statuses else None
    print(f"100 wrong passwords in {el:.2f} s: {guesses} checked (401), {statuses.count(429)} refused (429), first 429 at #{first429}; "
          f"{guesses/el:.1f} guesses/s over the run")
    # 2. 400 bogus logins at once from 127.0.0.1 (wrong passwords for the victim, as in the
    #    issue, plus unknown names), an honest login from 127.0.0.2 100 ms in.
    results = []
    def bogus(i):
        t0 = time.time()
        name = victim if i % 2 else "nobody" + uuid.uuid4().hex[:8]
        try:
            s = post("/api/login", {"username": name, "password": "wrong password"})
        except Exception as e:
            s = str(e)
        results.append((s, time.time() - t0))
    threads = [threading.Thread(target=bogus, args=(i,)) for i in range(400)]
    for th in threads: th.start()
    time.sleep(0.1)
    t = time.time(); tries = []
    while True:
        s = post("/api/login", {"username": honest, "password": "correct horse battery"}, "127.0.0.2")
        tries.append(s)
        if s != 503: break
        time.sleep(1)
    honest_wait = time.time() - t
    for th in threads: th.join()
    by = {}
    for s, d in results: by.setdefault(s, []).append(d)
    summary = ", ".join(f"{s}: {len(v)} (median {statistics.median(v):.2f} s, max {max(v):.2f} s)" for s, v in sorted(by.items(), key=str))
    print(f"flood of 400: {summary}")
    print(f"honest login (from another address) answered {tries[-1]} after {honest_wait:.2f} s, answers {tries}")
finally:
    proc.terminate(); proc.wait(); shutil.rmtree(data, ignore_errors=True)
