#!/usr/bin/env bash
# Static checks of the deployment files, no Docker engine or cluster needed:
#   Dockerfile, .dockerignore, compose.yaml, deploy/nginx.conf, deploy/k8s/*.yaml.
#
# - every YAML file parses;
# - every chat command, flag and environment variable is one chat knows (the list below,
#   cross-checked against src/cli.rs when it is there);
# - ports agree (LISTEN_ADDR, EXPOSE, compose ports, nginx upstreams, containerPort, probes,
#   Service targetPort); the binary name and path agree (Cargo.toml, Dockerfile, compose, k8s);
# - compose depends_on / healthchecks and the Kafka KRaft settings are consistent;
# - Kubernetes references (ConfigMap, Secret, selectors) resolve.
# Runs hadolint, kubernetes-validate and `docker compose config` as well when they are on PATH.
#
# Usage: scripts/check-deploy.sh        (exit 0: all passed; 1: a check failed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    echo "check-deploy: PyYAML missing, installing it" >&2
    "$PY" -m pip install --quiet pyyaml >&2 || {
        echo "check-deploy: cannot install PyYAML" >&2
        exit 2
    }
fi

exec "$PY" - "$@" <<'PYEOF'
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

# What chat understands (its CLI, see src/cli.rs). RUST_LOG is read by the log filter.
EXPECTED_ENV = {
    "CHAT_ROLE", "LISTEN_ADDR", "DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "KAFKA_TOPIC",
    "KAFKA_PARTITIONS", "JWT_SECRET", "LOG_FORMAT", "NO_MIGRATE", "RUST_LOG", "DATA_DIR",
}
FLAGS_WITH_VALUE = {
    "--role", "--listen", "--database-url", "--redis-url", "--kafka-brokers", "--kafka-topic",
    "--kafka-partitions", "--jwt-secret", "--log-format",
}
BOOL_FLAGS = {"--no-migrate"}
SUBCOMMANDS = {"serve", "migrate"}
ROLES = {"gateway", "consumer", "all"}
BIN_NAME = "chat"
BIN_PATH = "/usr/local/bin/chat"
PORT = 8080
MIN_GRACE_S = 30
COMPOSE_IMAGES = {"postgres": "postgres:16", "redis": "redis:7", "kafka": "apache/kafka:4.1.1"}

passed = 0
failures = []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL {what}")
    return ok


def note(msg):
    print(f"note {msg}")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- the CLI, from source
cli_env, cli_flags = None, None
if os.path.isfile("src/cli.rs"):
    src = read("src/cli.rs")
    cli_env = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src))
    cli_flags = set()
    pending = False
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("#[arg(") and re.search(r"\blong\b", s):
            pending = True
        m = re.match(r"pub\s+(\w+)\s*:", s)
        if m and pending:
            cli_flags.add("--" + m.group(1).replace("_", "-"))
            pending = False
    for v in sorted(EXPECTED_ENV - {"RUST_LOG"}):
        check(v in cli_env, f"src/cli.rs: env {v} (used by the deploy files) is not declared")
    for f in sorted(FLAGS_WITH_VALUE | BOOL_FLAGS):
        check(f in cli_flags, f"src/cli.rs: flag {f} (used by the deploy files) is not declared")
    for sub in sorted(SUBCOMMANDS):
        check(re.search(rf"\b{sub.capitalize()}\s*\(", src) is not None,
              f"src/cli.rs: subcommand {sub} not found")
else:
    note("src/cli.rs not found: CLI names checked against the built-in list only")


def check_env_name(where, name):
    check(name in EXPECTED_ENV, f"{where}: env {name} is not one chat reads")


def check_args(where, args):
    """args: the words after `chat`. Returns (subcommand, role, no_migrate)."""
    if not check(bool(args), f"{where}: no chat subcommand given"):
        return None, None, False
    sub = args[0]
    check(sub in SUBCOMMANDS, f"{where}: unknown subcommand {sub!r}")
    role, no_migrate, i = "all", False, 1
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        if flag in FLAGS_WITH_VALUE:
            if not eq:
                i += 1
                val = args[i] if i < len(args) else None
            check(val is not None, f"{where}: {flag} without a value")
            if flag == "--role":
                role = val
                check(val in ROLES, f"{where}: --role {val!r} not in {sorted(ROLES)}")
        elif flag in BOOL_FLAGS:
            no_migrate = True
        else:
            check(False, f"{where}: unknown argument {a!r}")
        if sub == "migrate" and flag not in ("--database-url", "--log-format"):
            check(False, f"{where}: chat migrate takes only --database-url/--log-format, not {flag}")
        i += 1
    return sub, role, no_migrate


def addr_port(addr):
    m = re.match(r"^(.*):(\d+)$", str(addr))
    return (m.group(1), int(m.group(2))) if m else (None, None)


def url_host_port(url, default_port):
    m = re.match(r"^[a-z0-9+]+://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?", str(url))
    return (m.group(1), int(m.group(2) or default_port)) if m else (None, None)


def interpolate(value):
    """Compose ${VAR:-default} / ${VAR-default} / ${VAR}: take the default (or empty)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}",
                  lambda m: m.group(1) or "", str(value))


# ---------------------------------------------------------------- YAML files
yaml_files = sorted({p for p in ["compose.yaml"] if os.path.exists(p)}
                    | set(glob.glob("deploy/**/*.yaml", recursive=True))
                    | set(glob.glob("deploy/**/*.yml", recursive=True)))
docs = {}
for path in yaml_files:
    try:
        with open(path, encoding="utf-8") as f:
            docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
        check(True, path)
    except yaml.YAMLError as e:
        check(False, f"{path}: YAML does not parse: {e}")
check("compose.yaml" in docs, "compose.yaml missing")
check(any(p.startswith("deploy/k8s/") for p in docs), "no YAML under deploy/k8s/")

# ---------------------------------------------------------------- Cargo.toml
bin_name = None
try:
    import tomllib
    with open("Cargo.toml", "rb") as f:
        cargo = tomllib.load(f)
    bins = cargo.get("bin") or [{"name": cargo["package"]["name"], "path": "src/main.rs"}]
    bin_name, bin_src = bins[0]["name"], bins[0].get("path", "src/main.rs")
except ModuleNotFoundError:  # Python < 3.11
    m = re.search(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', read("Cargo.toml"))
    bin_name, bin_src = (m.group(1) if m else None), "src/main.rs"
check(bin_name == BIN_NAME, f"Cargo.toml: binary is {bin_name!r}, deploy files expect {BIN_NAME!r}")

# ---------------------------------------------------------------- Dockerfile
image_uid = None
if check(os.path.isfile("Dockerfile"), "Dockerfile missing"):
    text = read("Dockerfile")
    # join continuation lines, drop comments
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    args = {}
    stages = []  # (name, base, [instructions])
    for ins in logical:
        op, _, rest = ins.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            k, _, v = rest.strip().partition("=")
            args[k] = v
        elif op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append((name, base, []))
        elif stages:
            stages[-1][2].append((op, rest.strip()))
    check(len(stages) >= 2, "Dockerfile: not multi-stage")
    builder = next((s for s in stages if s[0] == "builder"), None)
    runtime = stages[-1]
    if check(builder is not None, "Dockerfile: no `AS builder` stage"):
        check(re.match(r"rust:1(\.\d+){0,2}-bookworm$", builder[1]) is not None,
              f"Dockerfile: builder base {builder[1]!r} is not rust:1.x-bookworm")
        runs = " ".join(r for op, r in builder[2] if op == "RUN")
        check("cargo build --release --locked" in runs, "Dockerfile: no `cargo build --release --locked`")
        check("type=cache" in runs and "/usr/local/cargo/registry" in runs,
              "Dockerfile: no BuildKit cache mount for the cargo registry")
        check(re.search(r"type=cache[^ ]*target=/\S*target\b", runs) is not None,
              "Dockerfile: no BuildKit cache mount for the target directory")
        check(f"target/release/{BIN_NAME}" in runs,
              f"Dockerfile: the builder does not take target/release/{BIN_NAME}")
        check(bin_src in runs, f"Dockerfile: the dummy build does not write {bin_src}")
        copies = [r.split() for op, r in builder[2] if op == "COPY" and "--from" not in r]
        sources = [w for c in copies for w in c[:-1] if not w.startswith("--")]
        ignore = []
        if os.path.isfile(".dockerignore"):
            ignore = [l.strip().strip("/") for l in read(".dockerignore").splitlines()
                      if l.strip() and not l.startswith("#")]
        for s in ["Cargo.toml", "Cargo.lock", "src", "migrations", "static", "diesel.toml"]:
            check(s in sources, f"Dockerfile: builder does not COPY {s}")
        for s in sources:
            check(os.path.exists(s), f"Dockerfile: COPY source {s} does not exist in the repository")
            check(s not in ignore, f".dockerignore excludes {s}, which the Dockerfile copies")
        for must in ["target", ".git", "**/node_modules", "test-output", "**/*.db"]:
            check(must in ignore or must.lstrip("*/") in ignore, f".dockerignore lacks {must}")
    check(re.match(r"debian:bookworm-slim$", runtime[1]) is not None,
          f"Dockerfile: runtime base {runtime[1]!r} is not debian:bookworm-slim")
    rt = runtime[2]
    from_builder = [r.split() for op, r in rt if op == "COPY" and "--from=builder" in r]
    check(any(c[-1] == BIN_PATH and c[-2].endswith("/" + BIN_NAME) for c in from_builder),
          f"Dockerfile: runtime does not COPY --from=builder .../{BIN_NAME} {BIN_PATH}")
    rt_runs = " ".join(r for op, r in rt if op == "RUN")
    check("ca-certificates" in rt_runs, "Dockerfile: runtime lacks ca-certificates")
    users = [r for op, r in rt if op == "USER"]
    if check(bool(users), "Dockerfile: runtime has no USER"):
        u = users[-1].split(":")[0]
        check(u not in ("0", "root"), "Dockerfile: runtime USER is root")
        image_uid = int(u) if u.isdigit() else None
    env = {}
    for op, r in rt:
        if op == "ENV":
            for tok in shlex.split(r):
                k, _, v = tok.partition("=")
                env[k] = v
    for k in env:
        if k not in ("PATH",):
            check_env_name("Dockerfile ENV", k)
    host, port = addr_port(env.get("LISTEN_ADDR", ""))
    check(host == "0.0.0.0" and port == PORT, f"Dockerfile: ENV LISTEN_ADDR should be 0.0.0.0:{PORT}")
    check(env.get("LOG_FORMAT") == "json", "Dockerfile: ENV LOG_FORMAT should be json")
    exposed = [int(p.split("/")[0]) for op, r in rt if op == "EXPOSE" for p in r.split()]
    check(exposed == [PORT], f"Dockerfile: EXPOSE {exposed} != [{PORT}]")
    entry = [r for op, r in rt if op == "ENTRYPOINT"]
    cmd = [r for op, r in rt if op == "CMD"]
    entrypoint = json.loads(entry[-1]) if entry else []
    check(bool(entrypoint) and entrypoint[-1] in (BIN_NAME, BIN_PATH),
          f"Dockerfile: ENTRYPOINT {entrypoint} does not end with {BIN_NAME}")
    if entrypoint and "tini" in entrypoint[0]:
        check(entrypoint[0] == "/usr/bin/tini" and "tini" in rt_runs,
              "Dockerfile: ENTRYPOINT uses tini, but it is not installed at /usr/bin/tini")
    check(bool(cmd) and json.loads(cmd[-1]) == ["serve"], "Dockerfile: CMD should be [\"serve\"]")

# ---------------------------------------------------------------- compose.yaml
gateway_services = set()
compose = (docs.get("compose.yaml") or [{}])[0]
if compose:
    check("version" not in compose, "compose.yaml: obsolete top-level `version:` key")
    services = compose.get("services") or {}
    for name, svc in services.items():
        where = f"compose.yaml: {name}"
        image = str(svc.get("image", ""))
        for dep, cond in (svc.get("depends_on") or {}).items():
            check(dep in services, f"{where}: depends_on unknown service {dep}")
            c = (cond or {}).get("condition", "service_started")
            if c == "service_healthy":
                check("healthcheck" in services.get(dep, {}),
                      f"{where}: waits for {dep} healthy, but {dep} has no healthcheck")
            elif c == "service_completed_successfully":
                check(str(services.get(dep, {}).get("restart", "no")) == "no",
                      f"{where}: waits for one-shot {dep}, which restarts")
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":")[0] if isinstance(vol, str) else str(vol.get("source", ""))
            if src.startswith("."):
                check(os.path.exists(src), f"{where}: mounts missing file {src}")
        if name in COMPOSE_IMAGES:
            check(image == COMPOSE_IMAGES[name], f"{where}: image {image!r} != {COMPOSE_IMAGES[name]!r}")
        if "build" not in svc and image.split(":")[0].split("/")[-1] != BIN_NAME:
            continue
        # a chat service
        build = svc.get("build")
        if check(build is not None, f"{where}: chat service without build"):
            bctx = build if isinstance(build, str) else build.get("context", ".")
            bfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            check(os.path.normpath(os.path.join(bctx, bfile)) == "Dockerfile",
                  f"{where}: builds {bctx}/{bfile}, not ./Dockerfile")
        check("entrypoint" not in svc, f"{where}: overrides the image ENTRYPOINT")
        command = svc.get("command", ["serve"])
        command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        sub, role, no_migrate = check_args(where, command)
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        env = {k: interpolate(v) for k, v in env.items()}
        for k in env:
            check_env_name(where, k)
        host, port = addr_port(env.get("LISTEN_ADDR", f"0.0.0.0:{PORT}"))
        check(host == "0.0.0.0" and port == PORT, f"{where}: LISTEN_ADDR is not 0.0.0.0:{PORT}")
        for p in svc.get("ports") or []:
            container = int(str(p).rsplit(":", 1)[-1].split("/")[0]) if isinstance(p, (str, int)) \
                else int(p.get("target"))
            check(container == port, f"{where}: publishes container port {container}, chat listens on {port}")
        db = env.get("DATABASE_URL")
        if check(db is not None, f"{where}: no DATABASE_URL"):
            h, p = url_host_port(db, 5432)
            check(h in services, f"{where}: DATABASE_URL host {h} is not a compose service")
        if sub == "serve":
            gw = role in ("gateway", "all")
            if gw:
                gateway_services.add(name)
            for k in ("REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET"):
                check(k in env, f"{where}: chat serve needs {k}")
            check(len(env.get("JWT_SECRET", "")) >= 32, f"{where}: JWT_SECRET (default) shorter than 32 bytes")
            h, _ = url_host_port(env.get("REDIS_URL", ""), 6379)
            check(h in services, f"{where}: REDIS_URL host {h} is not a compose service")
            for b in env.get("KAFKA_BROKERS", "").split(","):
                bh, bp = addr_port(b.strip())
                kenv = (services.get(bh) or {}).get("environment") or {}
                adv = str(kenv.get("KAFKA_ADVERTISED_LISTENERS", ""))
                check(f"//{bh}:{bp}" in adv,
                      f"{where}: broker {b} is not among {bh}'s advertised listeners {adv!r}")
            grace = str(svc.get("stop_grace_period", "10s"))
            m = re.match(r"^(\d+)s$", grace)
            check(m is not None and int(m.group(1)) >= MIN_GRACE_S,
                  f"{where}: stop_grace_period {grace} < {MIN_GRACE_S}s for the drain")
            migrators = [n for n, s in services.items()
                         if (s.get("command") or [None])[0] == "migrate"]
            if migrators:
                check(no_migrate, f"{where}: a migrate service exists, so serve should pass --no-migrate")
                deps = svc.get("depends_on") or {}
                check(all((deps.get(m) or {}).get("condition") == "service_completed_successfully"
                          for m in migrators),
                      f"{where}: does not wait for {migrators} to complete")
    # Kafka, KRaft single node
    kafka = services.get("kafka")
    if check(kafka is not None, "compose.yaml: no kafka service"):
        kenv = {k: str(v) for k, v in (kafka.get("environment") or {}).items()}
        for k in ["KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
                  "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
                  "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                  "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                  "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]:
            check(k in kenv, f"compose.yaml: kafka lacks {k}")
        check(kenv.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false",
              "compose.yaml: kafka should have KAFKA_AUTO_CREATE_TOPICS_ENABLE=false")
        names = {l.split("://")[0] for l in kenv.get("KAFKA_LISTENERS", "").split(",") if l}
        pmap = {p.split(":")[0] for p in kenv.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",") if p}
        check(names and names <= pmap, "compose.yaml: kafka listeners missing from the protocol map")
        check(kenv.get("KAFKA_CONTROLLER_LISTENER_NAMES") in names,
              "compose.yaml: kafka controller listener is not among KAFKA_LISTENERS")
        voter = kenv.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
        ctrl_port = next((addr_port(l)[1] for l in kenv.get("KAFKA_LISTENERS", "").split(",")
                          if l.startswith(kenv.get("KAFKA_CONTROLLER_LISTENER_NAMES", "?") + "://")), None)
        check(voter.startswith(kenv.get("KAFKA_NODE_ID", "?") + "@") and addr_port(voter)[1] == ctrl_port,
              "compose.yaml: KAFKA_CONTROLLER_QUORUM_VOTERS does not name this node's controller port")
        hc = " ".join(map(str, (kafka.get("healthcheck") or {}).get("test", [])))
        check("/opt/kafka/bin/kafka-broker-api-versions.sh" in hc,
              "compose.yaml: kafka healthcheck should run kafka-broker-api-versions.sh")
    for svc_name, needle in (("postgres", "pg_isready"), ("redis", "redis-cli")):
        hc = " ".join(map(str, ((services.get(svc_name) or {}).get("healthcheck") or {}).get("test", [])))
        check(needle in hc, f"compose.yaml: {svc_name} healthcheck should use {needle}")
    host_ports = [str(p).split(":")[-2] for s in services.values() for p in s.get("ports") or []
                  if isinstance(p, str) and p.count(":") >= 1]
    host_ports = [interpolate(p) for p in host_ports]
    check(len(host_ports) == len(set(host_ports)), f"compose.yaml: host port published twice: {host_ports}")
    check(len(gateway_services) >= 2, "compose.yaml: fewer than two gateways")

# ---------------------------------------------------------------- deploy/nginx.conf
if os.path.isfile("deploy/nginx.conf"):
    conf = read("deploy/nginx.conf")
    ups = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    check(bool(ups), "deploy/nginx.conf: no upstream servers")
    for h, p in ups:
        check(h in gateway_services, f"deploy/nginx.conf: upstream {h} is not a compose gateway")
        check(int(p) == PORT, f"deploy/nginx.conf: upstream {h}:{p}, gateways listen on {PORT}")
    check("proxy_set_header Upgrade $http_upgrade" in conf and "$connection_upgrade" in conf,
          "deploy/nginx.conf: no WebSocket upgrade headers")
    listen = re.findall(r"^\s*listen\s+(\d+)", conf, re.M)
    lb = [s for s in (compose.get("services") or {}).values()
          if any("nginx.conf" in str(v) for v in s.get("volumes") or [])]
    for s in lb:
        for p in s.get("ports") or []:
            check(str(p).rsplit(":", 1)[-1] in listen,
                  f"compose.yaml: load balancer publishes {p}, nginx listens on {listen}")

# ---------------------------------------------------------------- deploy/k8s
k8s = [(p, d) for p, ds in docs.items() if p.startswith("deploy/k8s/") for d in ds]
objs = {}
for path, d in k8s:
    where = f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
    check(all(k in d for k in ("apiVersion", "kind", "metadata")) and d["metadata"].get("name"),
          f"{path}: object without apiVersion/kind/metadata.name")
    check("namespace" not in (d.get("metadata") or {}), f"{where}: sets a namespace")
    objs[(d.get("kind"), d["metadata"].get("name"))] = (path, d)

configmaps = {n: set((d.get("data") or {}).keys()) for (k, n), (_, d) in objs.items() if k == "ConfigMap"}
secrets = {n: set((d.get("stringData") or {}).keys()) | set((d.get("data") or {}).keys())
           for (k, n), (_, d) in objs.items() if k == "Secret"}
check("chat-config" in configmaps, "deploy/k8s: no ConfigMap chat-config")
check("chat-secrets" in secrets, "deploy/k8s: no Secret chat-secrets")
for n, keys in list(configmaps.items()) + list(secrets.items()):
    for key in keys:
        check_env_name(f"deploy/k8s: {n}", key)
check(secrets.get("chat-secrets", set()) >= {"DATABASE_URL", "JWT_SECRET"},
      "deploy/k8s: chat-secrets lacks DATABASE_URL or JWT_SECRET")

images = set()
pod_templates = {}  # deployment name -> (labels, ports by name)
for (kind, name), (path, d) in objs.items():
    if kind not in ("Deployment", "Job"):
        continue
    where = f"{path}: {kind}/{name}"
    tmpl = d["spec"]["template"]
    pod = tmpl["spec"]
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    ports_by_name = {}
    if kind == "Deployment":
        sel = d["spec"]["selector"]["matchLabels"]
        check(all(labels.get(k) == v for k, v in sel.items()), f"{where}: selector does not match the pod labels")
    if image_uid is not None:
        uid = (pod.get("securityContext") or {}).get("runAsUser")
        check(uid in (None, image_uid), f"{where}: runAsUser {uid} != the image's USER {image_uid}")
    for c in pod["containers"]:
        cw = f"{where} container {c['name']}"
        image = c.get("image", "")
        if image.rsplit("/", 1)[-1].split(":")[0].split("@")[0] != BIN_NAME:
            continue
        images.add(image)
        check("command" not in c, f"{cw}: overrides the image ENTRYPOINT (tini -- chat); use args")
        sub, role, no_migrate = check_args(cw, [str(a) for a in c.get("args", ["serve"])])
        env = {}
        for e in c.get("env") or []:
            check_env_name(cw, e["name"])
            env[e["name"]] = e.get("value")
            ref = (e.get("valueFrom") or {})
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                check(r["key"] in secrets.get(r["name"], set()), f"{cw}: Secret {r['name']} has no key {r['key']}")
            if "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                check(r["key"] in configmaps.get(r["name"], set()), f"{cw}: ConfigMap {r['name']} has no key {r['key']}")
        for ef in c.get("envFrom") or []:
            if "configMapRef" in ef:
                n = ef["configMapRef"]["name"]
                check(n in configmaps, f"{cw}: envFrom unknown ConfigMap {n}")
                env.update({k: "from-configmap" for k in configmaps.get(n, ())})
            if "secretRef" in ef:
                n = ef["secretRef"]["name"]
                check(n in secrets, f"{cw}: envFrom unknown Secret {n}")
                env.update({k: "from-secret" for k in secrets.get(n, ())})
        check("DATABASE_URL" in env, f"{cw}: no DATABASE_URL")
        if sub == "migrate":
            check(kind == "Job", f"{cw}: chat migrate outside a Job")
            check(pod.get("restartPolicy") in ("Never", "OnFailure"), f"{cw}: Job restartPolicy")
            continue
        check(kind == "Deployment", f"{cw}: chat serve outside a Deployment")
        check(no_migrate, f"{cw}: serve without --no-migrate (the Job migrates)")
        for k in ("REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET"):
            check(k in env, f"{cw}: chat serve needs {k}")
        host, lport = addr_port(env.get("LISTEN_ADDR") or f"0.0.0.0:{PORT}")
        check(host == "0.0.0.0", f"{cw}: LISTEN_ADDR must bind 0.0.0.0 for probes")
        ports_by_name = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        check(lport in ports_by_name.values(), f"{cw}: no containerPort {lport} (LISTEN_ADDR)")
        for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            pr = (c.get(probe) or {}).get("httpGet")
            if check(pr is not None, f"{cw}: no HTTP {probe}"):
                check(pr.get("path") == path_, f"{cw}: {probe} path {pr.get('path')} != {path_}")
                pp = pr.get("port")
                check(ports_by_name.get(pp, pp) == lport, f"{cw}: {probe} port {pp} is not {lport}")
        sp = (c.get("startupProbe") or {}).get("httpGet")
        if sp:
            check(sp.get("path") == "/healthz", f"{cw}: startupProbe should use /healthz")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
        pre_s = int(pre[-1]) if pre and pre[0] in ("sleep", "/bin/sleep") and pre[-1].isdigit() else 0
        check(grace - pre_s >= MIN_GRACE_S, f"{cw}: terminationGracePeriodSeconds {grace} leaves < {MIN_GRACE_S}s to drain")
        if role == "gateway":
            check(pre_s > 0, f"{cw}: gateway without a preStop sleep")
        res = c.get("resources") or {}
        check("requests" in res and "limits" in res, f"{cw}: resources requests/limits missing")
        pod_templates[name] = (labels, ports_by_name)
check(len(images) == 1, f"deploy/k8s: chat workloads use {len(images)} different images: {sorted(images)}")
for (kind, name), (path, d) in objs.items():
    if kind == "Service":
        sel = d["spec"].get("selector") or {}
        matches = [n for n, (labels, _) in pod_templates.items()
                   if all(labels.get(k) == v for k, v in sel.items())]
        if check(bool(matches), f"{path}: Service/{name} selects no chat Deployment"):
            for p in d["spec"]["ports"]:
                t = p.get("targetPort", p["port"])
                ok = all(t in pod_templates[m][1] or t in pod_templates[m][1].values() for m in matches)
                check(ok, f"{path}: Service/{name} targetPort {t} is not a port of {matches}")
    if kind == "PodDisruptionBudget":
        sel = d["spec"]["selector"]["matchLabels"]
        check(any(all(labels.get(k) == v for k, v in sel.items()) for labels, _ in pod_templates.values()),
              f"{path}: PodDisruptionBudget/{name} selects no Deployment")

# ---------------------------------------------------------------- optional tools
def tool(argv, what):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        note(f"{what}: not installed, skipped")
        return
    out = (r.stdout + r.stderr).strip()
    if check(r.returncode == 0, f"{what} failed:\n{out}"):
        note(f"{what}: ok")


if shutil.which("hadolint"):
    tool(["hadolint", "Dockerfile"], "hadolint Dockerfile")
else:
    note("hadolint: not installed, skipped")
if shutil.which("kubernetes-validate"):
    tool(["kubernetes-validate", "--strict", "--quiet"] + sorted(glob.glob("deploy/k8s/*.yaml")),
         "kubernetes-validate --strict deploy/k8s")
else:
    note("kubernetes-validate: not installed, skipped (pip install kubernetes-validate)")
if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                             capture_output=True).returncode == 0:
    tool(["docker", "compose", "-f", "compose.yaml", "config", "--quiet"], "docker compose config")
else:
    note("docker compose: not available, skipped")

print(f"check-deploy: {passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PYEOF
