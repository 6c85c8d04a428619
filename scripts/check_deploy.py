#!/usr/bin/env python3
"""Static checks of the deployment files, no Docker engine or cluster needed:
Dockerfile, .dockerignore, compose.yaml, deploy/compose.managed.yaml, deploy/nginx.conf,
deploy/k8s/*.yaml.

What chat accepts is not copied here: it comes from the binary itself,
`chat config --list --format json` (src/settings.rs, derived from clap's own description of
the command line plus the environment variables read outside clap).

- every YAML file parses;
- every chat subcommand, flag, flag value (--role, --log-format, ...) and environment
  variable in the deploy files is one the binary accepts (`chat config --list`);
- every chat workload (compose service, Kubernetes container, the image's default command)
  is accepted by the binary's own validation with its environment: `chat config --check --
  ARGS` parses and validates it as a start would, without connecting to anything (so a
  missing JWT_SECRET, a malformed URL or a partial set of service URLs fails here);
- ports agree (LISTEN_ADDR, EXPOSE, compose ports, nginx upstreams, containerPort, probes,
  Service targetPort); the binary name and path agree (Cargo.toml, Dockerfile, compose, k8s);
- the grace periods leave room for the drain (at least 30 s, and more than the drain
  timeout the workload runs with);
- compose depends_on / healthchecks and the Kafka KRaft settings are consistent;
- Kubernetes references (ConfigMap, Secret, selectors, volumes) resolve;
- secrets as files: every `…_FILE` setting, and every other setting whose value is a path
  into a mount (KAFKA_CLIENT_CERT, KAFKA_CLIENT_KEY), points into a mounted Secret or ConfigMap
  key (Kubernetes) or a compose secret defined with a file (deploy/compose.managed.yaml), and
  chat is asked with that key's or file's contents (deploy/secrets.example/ when
  deploy/secrets/ is not there; a stand-in CA certificate for `…_CA_FILE` and a stand-in client
  certificate and key for `…_CERT`/`…_KEY`, whose contents are the operator's); a Secret
  mounted unreadable by others is readable through the pod's fsGroup; a secret setting (one
  the binary also reads as `NAME_FILE`) is never given in the environment or a ConfigMap.
Runs hadolint, kubernetes-validate and `docker compose config` as well when they are on PATH.

Usage: scripts/check_deploy.py [--chat-bin PATH] [--root DIR]
  (exit 0: all passed; 1: a check failed; 2: cannot run). Without --chat-bin (or $CHAT_BIN)
  it builds the binary with `cargo build --bin chat` first. scripts/check-deploy.sh wraps it;
  scripts/check_deploy_test.py is its self-test.
"""

import argparse
import base64
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

# The deployment's own choices (not chat's: chat's come from the binary).
BIN_NAME = "chat"
BIN_PATH = "/usr/local/bin/chat"
PORT = 8080
MIN_GRACE_S = 30
COMPOSE_IMAGES = {"postgres": "postgres:16", "redis": "redis:7", "kafka": "apache/kafka:4.1.1"}
# The setting whose value the grace periods must exceed (skipped, with a note, if the binary
# has no such variable).
DRAIN_ENV = "DRAIN_TIMEOUT_SECS"
# Subcommands a deployment runs.
DEPLOY_SUBCOMMANDS = ("serve", "migrate")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- what the binary accepts
class Cli:
    """What `chat config --list --format json` printed, and a way to ask `--check`."""

    def __init__(self, settings, chat_bin=None):
        self.settings = settings
        self.chat_bin = chat_bin
        self.env = {s["env"] for s in settings if s.get("env")}
        # Secrets: the settings chat also reads from a file (NAME and NAME_FILE).
        self.secret_env = {e for e in self.env if e + "_FILE" in self.env}
        scopes = {s["scope"] for s in settings}
        self.subcommands = sorted(scopes - {"global", "process"})
        self.flags = {}  # subcommand -> {"--flag": setting}; global flags in every one
        for sub in self.subcommands:
            self.flags[sub] = {s["flag"]: s for s in settings
                               if s.get("flag") and s["scope"] in (sub, "global")}

    def by_env(self, name, scope="serve"):
        return next((s for s in self.settings
                     if s.get("env") == name and s["scope"] in (scope, "global", "process")), None)

    def default_of(self, env_name, scope="serve"):
        s = self.by_env(env_name, scope)
        return s.get("default") if s else None

    def check(self, args, env):
        """`chat config --check -- ARGS` with exactly `env`: (ok, message)."""
        if not self.chat_bin:
            return None, "no binary to ask"
        r = subprocess.run([self.chat_bin, "config", "--check", "--", *args], env=env,
                           capture_output=True, text=True, timeout=60)
        return r.returncode == 0, (r.stdout + r.stderr).strip()


def chat_binary(explicit=None):
    """The chat binary to ask: --chat-bin, $CHAT_BIN, or `cargo build --bin chat`."""
    path = explicit or os.environ.get("CHAT_BIN")
    if path:
        return path
    cargo = shutil.which("cargo")
    if not cargo:
        raise SystemExit("check-deploy: no --chat-bin, no $CHAT_BIN and no cargo to build chat")
    meta = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    target = json.loads(meta.stdout)["target_directory"]
    print("check-deploy: cargo build --bin chat", file=sys.stderr)
    subprocess.run([cargo, "build", "--quiet", "--bin", "chat"], cwd=REPO, check=True)
    return os.path.join(target, "debug", "chat")


def load_cli(chat_bin):
    try:
        r = subprocess.run([chat_bin, "config", "--list", "--format", "json"],
                           capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise SystemExit(f"check-deploy: cannot run {chat_bin}: {e}")
    if r.returncode != 0:
        raise SystemExit(f"check-deploy: `{chat_bin} config --list` failed:\n{r.stderr}")
    return Cli(json.loads(r.stdout), chat_bin)


# ---------------------------------------------------------------- helpers
def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


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


class Checks:
    """Counts passed checks, prints and keeps failures."""

    def __init__(self, cli, out=print):
        self.cli = cli
        self.out = out
        self.passed = 0
        self.failures = []
        self.notes = []

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            self.out(f"FAIL {what}")
        return ok

    def note(self, msg):
        self.notes.append(msg)
        self.out(f"note {msg}")

    # -- chat's own command line
    def env_name(self, where, name):
        self.check(name in self.cli.env,
                   f"{where}: env {name} is not one chat reads (chat config --list)")

    def args(self, where, args):
        """args: the words after `chat`. Returns (subcommand, role, no_migrate)."""
        if not self.check(bool(args), f"{where}: no chat subcommand given"):
            return None, None, False
        sub = args[0]
        self.check(sub in DEPLOY_SUBCOMMANDS and sub in self.cli.subcommands,
                   f"{where}: unknown subcommand {sub!r} (chat has {self.cli.subcommands})")
        flags = self.cli.flags.get(sub, {})
        role_setting = self.cli.by_env("CHAT_ROLE") or {}
        role = role_setting.get("default", "all")
        no_migrate, i = False, 1
        while i < len(args):
            a = args[i]
            flag, eq, val = a.partition("=")
            s = flags.get(flag)
            if s is None:
                if sub == "migrate" and any(flag in f for f in self.cli.flags.values()):
                    self.check(False, f"{where}: chat migrate takes only {sorted(flags)}, not {flag}")
                else:
                    self.check(False, f"{where}: unknown argument {a!r}")
            elif s["kind"] == "switch":
                self.check(not eq, f"{where}: {flag} takes no value")
                if flag == "--no-migrate":
                    no_migrate = True
            else:
                if not eq:
                    i += 1
                    val = args[i] if i < len(args) else None
                if self.check(val is not None, f"{where}: {flag} without a value"):
                    values = s.get("values") or []
                    self.check(not values or val in values,
                               f"{where}: {flag} {val!r} not in {values}")
                    if s.get("env") == "CHAT_ROLE":
                        role = val
            i += 1
        return sub, role, no_migrate

    def validate(self, where, args, env):
        """The binary's own verdict on this command line and environment."""
        env = {k: str(v) for k, v in env.items() if v is not None}
        ok, msg = self.cli.check(args, env)
        if ok is None:
            self.note(f"{where}: not validated ({msg})")
        else:
            self.check(ok, f"{where}: chat config --check -- {' '.join(args)} refuses it: {msg}")

    def drain_room(self, where, env, room_s, what):
        """room_s: seconds between SIGTERM and SIGKILL."""
        self.check(room_s >= MIN_GRACE_S, f"{where}: {what} leaves < {MIN_GRACE_S}s to drain")
        drain = env.get(DRAIN_ENV) or self.cli.default_of(DRAIN_ENV)
        if self.cli.by_env(DRAIN_ENV) is None:
            self.note(f"{where}: chat has no {DRAIN_ENV}: drain timeout not compared")
        elif str(drain).isdigit():
            self.check(room_s > int(drain),
                       f"{where}: {what} leaves {room_s}s, not more than the drain ({DRAIN_ENV}={drain})")


# ---------------------------------------------------------------- the files
def check_yaml(c):
    yaml_files = sorted({p for p in ["compose.yaml"] if os.path.exists(p)}
                        | set(glob.glob("deploy/**/*.yaml", recursive=True))
                        | set(glob.glob("deploy/**/*.yml", recursive=True)))
    docs = {}
    for path in yaml_files:
        try:
            with open(path, encoding="utf-8") as f:
                docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
            c.check(True, path)
        except yaml.YAMLError as e:
            c.check(False, f"{path}: YAML does not parse: {e}")
    c.check("compose.yaml" in docs, "compose.yaml missing")
    c.check(any(p.startswith("deploy/k8s/") for p in docs), "no YAML under deploy/k8s/")
    return docs


def check_cargo(c):
    try:
        import tomllib
        with open("Cargo.toml", "rb") as f:
            cargo = tomllib.load(f)
        bins = cargo.get("bin") or [{"name": cargo["package"]["name"], "path": "src/main.rs"}]
        bin_name, bin_src = bins[0]["name"], bins[0].get("path", "src/main.rs")
    except ModuleNotFoundError:  # Python < 3.11
        m = re.search(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', read("Cargo.toml"))
        bin_name, bin_src = (m.group(1) if m else None), "src/main.rs"
    c.check(bin_name == BIN_NAME, f"Cargo.toml: binary is {bin_name!r}, deploy files expect {BIN_NAME!r}")
    return bin_src


def dockerfile_instructions(text):
    """Logical lines (continuations joined, comments dropped) → ARGs and stages."""
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
    stages = []  # (name, base, [(op, rest)])
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
    return stages


def check_dockerfile(c, bin_src):
    """Returns the runtime image's numeric USER (or None)."""
    image_uid = None
    if not c.check(os.path.isfile("Dockerfile"), "Dockerfile missing"):
        return image_uid
    stages = dockerfile_instructions(read("Dockerfile"))
    c.check(len(stages) >= 2, "Dockerfile: not multi-stage")
    builder = next((s for s in stages if s[0] == "builder"), None)
    runtime = stages[-1]
    if c.check(builder is not None, "Dockerfile: no `AS builder` stage"):
        c.check(re.match(r"rust:1(\.\d+){0,2}-bookworm$", builder[1]) is not None,
                f"Dockerfile: builder base {builder[1]!r} is not rust:1.x-bookworm")
        runs = " ".join(r for op, r in builder[2] if op == "RUN")
        c.check("cargo build --release --locked" in runs, "Dockerfile: no `cargo build --release --locked`")
        c.check("type=cache" in runs and "/usr/local/cargo/registry" in runs,
                "Dockerfile: no BuildKit cache mount for the cargo registry")
        c.check(re.search(r"type=cache[^ ]*target=/\S*target\b", runs) is not None,
                "Dockerfile: no BuildKit cache mount for the target directory")
        c.check(f"target/release/{BIN_NAME}" in runs,
                f"Dockerfile: the builder does not take target/release/{BIN_NAME}")
        c.check(bin_src in runs, f"Dockerfile: the dummy build does not write {bin_src}")
        copies = [r.split() for op, r in builder[2] if op == "COPY" and "--from" not in r]
        sources = [w for cp in copies for w in cp[:-1] if not w.startswith("--")]
        ignore = []
        if os.path.isfile(".dockerignore"):
            ignore = [l.strip().strip("/") for l in read(".dockerignore").splitlines()
                      if l.strip() and not l.startswith("#")]
        for s in ["Cargo.toml", "Cargo.lock", "src", "migrations", "static", "diesel.toml"]:
            c.check(s in sources, f"Dockerfile: builder does not COPY {s}")
        for s in sources:
            c.check(os.path.exists(s), f"Dockerfile: COPY source {s} does not exist in the repository")
            c.check(s not in ignore, f".dockerignore excludes {s}, which the Dockerfile copies")
        for must in ["target", ".git", "**/node_modules", "test-output", "**/*.db"]:
            c.check(must in ignore or must.lstrip("*/") in ignore, f".dockerignore lacks {must}")
    c.check(re.match(r"debian:bookworm-slim$", runtime[1]) is not None,
            f"Dockerfile: runtime base {runtime[1]!r} is not debian:bookworm-slim")
    rt = runtime[2]
    from_builder = [r.split() for op, r in rt if op == "COPY" and "--from=builder" in r]
    c.check(any(cp[-1] == BIN_PATH and cp[-2].endswith("/" + BIN_NAME) for cp in from_builder),
            f"Dockerfile: runtime does not COPY --from=builder .../{BIN_NAME} {BIN_PATH}")
    rt_runs = " ".join(r for op, r in rt if op == "RUN")
    c.check("ca-certificates" in rt_runs, "Dockerfile: runtime lacks ca-certificates")
    users = [r for op, r in rt if op == "USER"]
    if c.check(bool(users), "Dockerfile: runtime has no USER"):
        u = users[-1].split(":")[0]
        c.check(u not in ("0", "root"), "Dockerfile: runtime USER is root")
        image_uid = int(u) if u.isdigit() else None
    env = {}
    for op, r in rt:
        if op == "ENV":
            for tok in shlex.split(r):
                k, _, v = tok.partition("=")
                env[k] = v
    for k in env:
        if k not in ("PATH",):
            c.env_name("Dockerfile ENV", k)
    host, port = addr_port(env.get("LISTEN_ADDR", ""))
    c.check(host == "0.0.0.0" and port == PORT, f"Dockerfile: ENV LISTEN_ADDR should be 0.0.0.0:{PORT}")
    c.check(env.get("LOG_FORMAT") == "json", "Dockerfile: ENV LOG_FORMAT should be json")
    exposed = [int(p.split("/")[0]) for op, r in rt if op == "EXPOSE" for p in r.split()]
    c.check(exposed == [PORT], f"Dockerfile: EXPOSE {exposed} != [{PORT}]")
    entry = [r for op, r in rt if op == "ENTRYPOINT"]
    cmd = [r for op, r in rt if op == "CMD"]
    entrypoint = json.loads(entry[-1]) if entry else []
    c.check(bool(entrypoint) and entrypoint[-1] in (BIN_NAME, BIN_PATH),
            f"Dockerfile: ENTRYPOINT {entrypoint} does not end with {BIN_NAME}")
    if entrypoint and "tini" in entrypoint[0]:
        c.check(entrypoint[0] == "/usr/bin/tini" and "tini" in rt_runs,
                "Dockerfile: ENTRYPOINT uses tini, but it is not installed at /usr/bin/tini")
    command = json.loads(cmd[-1]) if cmd else []
    c.check(command == ["serve"], "Dockerfile: CMD should be [\"serve\"]")
    if command:
        # `docker run IMAGE` with nothing else: the embedded mode.
        c.args("Dockerfile CMD", command)
        c.validate("Dockerfile (docker run IMAGE)", command, env)
    return image_uid


def check_compose(c, docs):
    """Returns (the compose document, the names of its gateway services)."""
    gateway_services = set()
    compose = (docs.get("compose.yaml") or [{}])[0]
    if not compose:
        return compose, gateway_services
    c.check("version" not in compose, "compose.yaml: obsolete top-level `version:` key")
    services = compose.get("services") or {}
    for name, svc in services.items():
        where = f"compose.yaml: {name}"
        image = str(svc.get("image", ""))
        for dep, cond in (svc.get("depends_on") or {}).items():
            c.check(dep in services, f"{where}: depends_on unknown service {dep}")
            cnd = (cond or {}).get("condition", "service_started")
            if cnd == "service_healthy":
                c.check("healthcheck" in services.get(dep, {}),
                        f"{where}: waits for {dep} healthy, but {dep} has no healthcheck")
            elif cnd == "service_completed_successfully":
                c.check(str(services.get(dep, {}).get("restart", "no")) == "no",
                        f"{where}: waits for one-shot {dep}, which restarts")
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":")[0] if isinstance(vol, str) else str(vol.get("source", ""))
            if src.startswith("."):
                c.check(os.path.exists(src), f"{where}: mounts missing file {src}")
        if name in COMPOSE_IMAGES:
            c.check(image == COMPOSE_IMAGES[name], f"{where}: image {image!r} != {COMPOSE_IMAGES[name]!r}")
        if "build" not in svc and image.split(":")[0].split("/")[-1] != BIN_NAME:
            continue
        # a chat service
        build = svc.get("build")
        if c.check(build is not None, f"{where}: chat service without build"):
            bctx = build if isinstance(build, str) else build.get("context", ".")
            bfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            c.check(os.path.normpath(os.path.join(bctx, bfile)) == "Dockerfile",
                    f"{where}: builds {bctx}/{bfile}, not ./Dockerfile")
        c.check("entrypoint" not in svc, f"{where}: overrides the image ENTRYPOINT")
        command = svc.get("command", ["serve"])
        command = shlex.split(command) if isinstance(command, str) else [str(x) for x in command]
        sub, role, no_migrate = c.args(where, command)
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        env = {k: interpolate(v) for k, v in env.items()}
        for k in env:
            c.env_name(where, k)
        c.validate(where, command, env)
        host, port = addr_port(env.get("LISTEN_ADDR", f"0.0.0.0:{PORT}"))
        c.check(host == "0.0.0.0" and port == PORT, f"{where}: LISTEN_ADDR is not 0.0.0.0:{PORT}")
        for p in svc.get("ports") or []:
            container = int(str(p).rsplit(":", 1)[-1].split("/")[0]) if isinstance(p, (str, int)) \
                else int(p.get("target"))
            c.check(container == port, f"{where}: publishes container port {container}, chat listens on {port}")
        db = env.get("DATABASE_URL")
        if c.check(db is not None, f"{where}: no DATABASE_URL"):
            h, _ = url_host_port(db, 5432)
            c.check(h in services, f"{where}: DATABASE_URL host {h} is not a compose service")
        if sub != "serve":
            continue
        if role in ("gateway", "all"):
            gateway_services.add(name)
        for k in ("REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET"):
            c.check(k in env, f"{where}: chat serve needs {k}")
        c.check(len(env.get("JWT_SECRET", "")) >= 32, f"{where}: JWT_SECRET (default) shorter than 32 bytes")
        h, _ = url_host_port(env.get("REDIS_URL", ""), 6379)
        c.check(h in services, f"{where}: REDIS_URL host {h} is not a compose service")
        for b in env.get("KAFKA_BROKERS", "").split(","):
            bh, bp = addr_port(b.strip())
            kenv = (services.get(bh) or {}).get("environment") or {}
            adv = str(kenv.get("KAFKA_ADVERTISED_LISTENERS", ""))
            c.check(f"//{bh}:{bp}" in adv,
                    f"{where}: broker {b} is not among {bh}'s advertised listeners {adv!r}")
        grace = str(svc.get("stop_grace_period", "10s"))
        m = re.match(r"^(\d+)s$", grace)
        if c.check(m is not None, f"{where}: stop_grace_period {grace} is not in seconds"):
            c.drain_room(where, env, int(m.group(1)), f"stop_grace_period {grace}")
        migrators = [n for n, s in services.items() if (s.get("command") or [None])[0] == "migrate"]
        if migrators:
            c.check(no_migrate, f"{where}: a migrate service exists, so serve should pass --no-migrate")
            deps = svc.get("depends_on") or {}
            c.check(all((deps.get(m) or {}).get("condition") == "service_completed_successfully"
                        for m in migrators),
                    f"{where}: does not wait for {migrators} to complete")
    check_kafka(c, services)
    for svc_name, needle in (("postgres", "pg_isready"), ("redis", "redis-cli")):
        hc = " ".join(map(str, ((services.get(svc_name) or {}).get("healthcheck") or {}).get("test", [])))
        c.check(needle in hc, f"compose.yaml: {svc_name} healthcheck should use {needle}")
    host_ports = [str(p).split(":")[-2] for s in services.values() for p in s.get("ports") or []
                  if isinstance(p, str) and p.count(":") >= 1]
    host_ports = [interpolate(p) for p in host_ports]
    c.check(len(host_ports) == len(set(host_ports)), f"compose.yaml: host port published twice: {host_ports}")
    c.check(len(gateway_services) >= 2, "compose.yaml: fewer than two gateways")
    return compose, gateway_services


MANAGED_COMPOSE = "deploy/compose.managed.yaml"


def check_compose_managed(c, docs):
    """deploy/compose.managed.yaml: chat alone against managed services, its secrets as files
    (compose `secrets:` from deploy/secrets/, whose example is deploy/secrets.example/)."""
    compose = (docs.get(MANAGED_COMPOSE) or [None])[0]
    if compose is None:
        return
    base = os.path.dirname(MANAGED_COMPOSE)
    services = compose.get("services") or {}
    top_secrets = compose.get("secrets") or {}
    for name, svc in services.items():
        where = f"{MANAGED_COMPOSE}: {name}"
        for dep in svc.get("depends_on") or {}:
            c.check(dep in services, f"{where}: depends_on unknown service {dep}")
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":")[0] if isinstance(vol, str) else str(vol.get("source", ""))
            if src.startswith("."):
                c.check(os.path.exists(os.path.join(base, src)), f"{where}: mounts missing file {src}")
        if "build" not in svc:
            continue
        build = svc["build"]
        bctx = build if isinstance(build, str) else build.get("context", ".")
        bfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        c.check(os.path.normpath(os.path.join(base, bctx, bfile)) == "Dockerfile",
                f"{where}: builds {bctx}/{bfile}, not the repository's Dockerfile")
        command = svc.get("command", ["serve"])
        command = shlex.split(command) if isinstance(command, str) else [str(x) for x in command]
        sub, role, no_migrate = c.args(where, command)
        env = {k: interpolate(v) for k, v in (svc.get("environment") or {}).items()}
        for k in env:
            c.env_name(where, k)
        for k in sorted(c.cli.secret_env):
            c.check(k not in env, f"{where}: {k} in the environment; give it as a secret file ({k}_FILE)")
        mine = {str(x) if not isinstance(x, dict) else str(x.get("source")) for x in svc.get("secrets") or []}
        with tempfile.TemporaryDirectory(prefix="check-deploy-files-") as tmp:
            files_ok = True
            for k, v in list(env.items()):
                if not (k.endswith("_FILE") or str(v).startswith("/run/secrets/")):
                    continue
                local = None
                m = re.match(r"^/run/secrets/([^/]+)$", v)
                if c.check(m is not None, f"{where}: {k}={v} is not a compose secret (/run/secrets/NAME)") \
                        and c.check(m.group(1) in mine, f"{where}: {k}={v}, but the service has no secret {m.group(1)}") \
                        and c.check(m.group(1) in top_secrets and "file" in (top_secrets[m.group(1)] or {}),
                                    f"{where}: secret {m.group(1)} is not defined with a file"):
                    rel = str(top_secrets[m.group(1)]["file"])
                    given = os.path.join(base, rel)
                    example = os.path.join(base, re.sub(r"^(\./)?secrets/", "secrets.example/", rel))
                    if c.check(os.path.isfile(given) or os.path.isfile(example),
                               f"{where}: secret {m.group(1)}: neither {given} nor its example {example}"):
                        if stand_in_kind(k):
                            local = stand_in(tmp, stand_in_kind(k))
                        else:
                            local = given if os.path.isfile(given) else example
                files_ok = files_ok and local is not None
                env[k] = local
            if files_ok:
                c.validate(where, command, env)
            else:
                c.note(f"{where}: not validated by chat config --check (a secret file is missing)")
        host, port = addr_port(env.get("LISTEN_ADDR", f"0.0.0.0:{PORT}"))
        c.check(host == "0.0.0.0" and port == PORT, f"{where}: LISTEN_ADDR is not 0.0.0.0:{PORT}")
        c.check(has_setting(env, "DATABASE_URL"), f"{where}: no DATABASE_URL_FILE")
        if sub != "serve":
            continue
        c.check(no_migrate, f"{where}: serve without --no-migrate (the migrate service migrates)")
        for k in ("REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET"):
            c.check(has_setting(env, k), f"{where}: chat serve needs {k} (or {k}_FILE)")
        grace = str(svc.get("stop_grace_period", "10s"))
        m = re.match(r"^(\d+)s$", grace)
        if c.check(m is not None, f"{where}: stop_grace_period {grace} is not in seconds"):
            c.drain_room(where, env, int(m.group(1)), f"stop_grace_period {grace}")


def check_kafka(c, services):
    """Kafka, KRaft single node."""
    kafka = services.get("kafka")
    if not c.check(kafka is not None, "compose.yaml: no kafka service"):
        return
    kenv = {k: str(v) for k, v in (kafka.get("environment") or {}).items()}
    for k in ["KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
              "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
              "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_CONTROLLER_QUORUM_VOTERS",
              "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
              "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]:
        c.check(k in kenv, f"compose.yaml: kafka lacks {k}")
    c.check(kenv.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false",
            "compose.yaml: kafka should have KAFKA_AUTO_CREATE_TOPICS_ENABLE=false")
    names = {l.split("://")[0] for l in kenv.get("KAFKA_LISTENERS", "").split(",") if l}
    pmap = {p.split(":")[0] for p in kenv.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",") if p}
    c.check(names and names <= pmap, "compose.yaml: kafka listeners missing from the protocol map")
    c.check(kenv.get("KAFKA_CONTROLLER_LISTENER_NAMES") in names,
            "compose.yaml: kafka controller listener is not among KAFKA_LISTENERS")
    voter = kenv.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    ctrl_port = next((addr_port(l)[1] for l in kenv.get("KAFKA_LISTENERS", "").split(",")
                      if l.startswith(kenv.get("KAFKA_CONTROLLER_LISTENER_NAMES", "?") + "://")), None)
    c.check(voter.startswith(kenv.get("KAFKA_NODE_ID", "?") + "@") and addr_port(voter)[1] == ctrl_port,
            "compose.yaml: KAFKA_CONTROLLER_QUORUM_VOTERS does not name this node's controller port")
    hc = " ".join(map(str, (kafka.get("healthcheck") or {}).get("test", [])))
    c.check("/opt/kafka/bin/kafka-broker-api-versions.sh" in hc,
            "compose.yaml: kafka healthcheck should run kafka-broker-api-versions.sh")


def check_nginx(c, compose, gateway_services):
    if not os.path.isfile("deploy/nginx.conf"):
        return
    conf = read("deploy/nginx.conf")
    ups = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    c.check(bool(ups), "deploy/nginx.conf: no upstream servers")
    for h, p in ups:
        c.check(h in gateway_services, f"deploy/nginx.conf: upstream {h} is not a compose gateway")
        c.check(int(p) == PORT, f"deploy/nginx.conf: upstream {h}:{p}, gateways listen on {PORT}")
    c.check("proxy_set_header Upgrade $http_upgrade" in conf and "$connection_upgrade" in conf,
            "deploy/nginx.conf: no WebSocket upgrade headers")
    listen = re.findall(r"^\s*listen\s+(\d+)", conf, re.M)
    lb = [s for s in (compose.get("services") or {}).values()
          if any("nginx.conf" in str(v) for v in s.get("volumes") or [])]
    for s in lb:
        for p in s.get("ports") or []:
            c.check(str(p).rsplit(":", 1)[-1] in listen,
                    f"compose.yaml: load balancer publishes {p}, nginx listens on {listen}")


def secret_values(d):
    vals = dict(d.get("stringData") or {})
    for k, v in (d.get("data") or {}).items():
        try:
            vals.setdefault(k, base64.b64decode(str(v)).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            vals.setdefault(k, None)
    return vals


def check_k8s(c, docs, image_uid):
    k8s = [(p, d) for p, ds in docs.items() if p.startswith("deploy/k8s/") for d in ds]
    objs = {}
    for path, d in k8s:
        where = f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        c.check(all(k in d for k in ("apiVersion", "kind", "metadata")) and d["metadata"].get("name"),
                f"{path}: object without apiVersion/kind/metadata.name")
        c.check("namespace" not in (d.get("metadata") or {}), f"{where}: sets a namespace")
        objs[(d.get("kind"), d["metadata"].get("name"))] = (path, d)

    configmaps = {n: {k: str(v) for k, v in (d.get("data") or {}).items()}
                  for (k, n), (_, d) in objs.items() if k == "ConfigMap"}
    secrets = {n: secret_values(d) for (k, n), (_, d) in objs.items() if k == "Secret"}
    c.check("chat-config" in configmaps, "deploy/k8s: no ConfigMap chat-config")
    c.check("chat-secrets" in secrets, "deploy/k8s: no Secret chat-secrets")
    c.check(set(secrets.get("chat-secrets", {})) >= {"DATABASE_URL", "JWT_SECRET"},
            "deploy/k8s: chat-secrets lacks DATABASE_URL or JWT_SECRET")
    env_sources = set()  # (kind, name) of the objects containers take variables from (envFrom)

    images = set()
    pod_templates = {}  # deployment name -> (labels, ports by name)
    for (kind, name), (path, d) in objs.items():
        if kind not in ("Deployment", "Job"):
            continue
        where = f"{path}: {kind}/{name}"
        tmpl = d["spec"]["template"]
        pod = tmpl["spec"]
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        if kind == "Deployment":
            sel = d["spec"]["selector"]["matchLabels"]
            c.check(all(labels.get(k) == v for k, v in sel.items()), f"{where}: selector does not match the pod labels")
        if image_uid is not None:
            uid = (pod.get("securityContext") or {}).get("runAsUser")
            c.check(uid in (None, image_uid), f"{where}: runAsUser {uid} != the image's USER {image_uid}")
        for ctr in pod["containers"]:
            cw = f"{where} container {ctr['name']}"
            image = ctr.get("image", "")
            if image.rsplit("/", 1)[-1].split(":")[0].split("@")[0] != BIN_NAME:
                continue
            images.add(image)
            c.check("command" not in ctr, f"{cw}: overrides the image ENTRYPOINT (tini -- chat); use args")
            args = [str(a) for a in ctr.get("args", ["serve"])]
            sub, role, no_migrate = c.args(cw, args)
            env, resolved = {}, True  # env: name -> value (None: not known statically)
            for e in ctr.get("env") or []:
                c.env_name(cw, e["name"])
                env[e["name"]] = e.get("value")
                ref = e.get("valueFrom") or {}
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    c.check(r["key"] in secrets.get(r["name"], {}), f"{cw}: Secret {r['name']} has no key {r['key']}")
                    env[e["name"]] = secrets.get(r["name"], {}).get(r["key"])
                elif "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    if r.get("optional") and r["key"] not in configmaps.get(r["name"], {}):
                        del env[e["name"]]  # an optional key that is not there: not set
                        continue
                    c.check(r["key"] in configmaps.get(r["name"], {}), f"{cw}: ConfigMap {r['name']} has no key {r['key']}")
                    env[e["name"]] = configmaps.get(r["name"], {}).get(r["key"])
                elif ref:
                    resolved = False  # fieldRef, resourceFieldRef: known only in the cluster
            for ef in ctr.get("envFrom") or []:
                if "configMapRef" in ef:
                    n = ef["configMapRef"]["name"]
                    c.check(n in configmaps, f"{cw}: envFrom unknown ConfigMap {n}")
                    src = configmaps.get(n, {})
                    env_sources.add(("ConfigMap", n))
                elif "secretRef" in ef:
                    n = ef["secretRef"]["name"]
                    c.check(n in secrets, f"{cw}: envFrom unknown Secret {n}")
                    src = secrets.get(n, {})
                    env_sources.add(("Secret", n))
                else:
                    src = {}
                # Explicit `env` entries win over envFrom.
                for k, v in src.items():
                    env.setdefault(k, v)
            mounts = k8s_mounts(c, cw, pod, ctr, configmaps, secrets)
            with tempfile.TemporaryDirectory(prefix="check-deploy-files-") as tmp:
                # Settings that name a file (…_FILE) must point into a mounted Secret or
                # ConfigMap key; chat is asked with that key's contents in a file of its own.
                files_ok = True
                for k, v in list(env.items()):
                    if v is not None and (k.endswith("_FILE") or in_mount(v, mounts)):
                        local = mounted_file(c, cw, k, v, mounts, tmp)
                        files_ok = files_ok and local is not None
                        env[k] = local
                if resolved and files_ok and all(v is not None for v in env.values()):
                    c.validate(cw, args, env)
                else:
                    c.note(f"{cw}: env not fully known statically, not validated by chat config --check")
            c.check(has_setting(env, "DATABASE_URL"), f"{cw}: no DATABASE_URL (or DATABASE_URL_FILE)")
            if sub == "migrate":
                c.check(kind == "Job", f"{cw}: chat migrate outside a Job")
                c.check(pod.get("restartPolicy") in ("Never", "OnFailure"), f"{cw}: Job restartPolicy")
                continue
            c.check(kind == "Deployment", f"{cw}: chat serve outside a Deployment")
            c.check(no_migrate, f"{cw}: serve without --no-migrate (the Job migrates)")
            for k in ("REDIS_URL", "KAFKA_BROKERS", "JWT_SECRET"):
                c.check(has_setting(env, k), f"{cw}: chat serve needs {k} (or {k}_FILE)")
            host, lport = addr_port(env.get("LISTEN_ADDR") or f"0.0.0.0:{PORT}")
            c.check(host == "0.0.0.0", f"{cw}: LISTEN_ADDR must bind 0.0.0.0 for probes")
            ports_by_name = {p.get("name"): p["containerPort"] for p in ctr.get("ports") or []}
            c.check(lport in ports_by_name.values(), f"{cw}: no containerPort {lport} (LISTEN_ADDR)")
            for probe, path_ in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                pr = (ctr.get(probe) or {}).get("httpGet")
                if c.check(pr is not None, f"{cw}: no HTTP {probe}"):
                    c.check(pr.get("path") == path_, f"{cw}: {probe} path {pr.get('path')} != {path_}")
                    pp = pr.get("port")
                    c.check(ports_by_name.get(pp, pp) == lport, f"{cw}: {probe} port {pp} is not {lport}")
            sp = (ctr.get("startupProbe") or {}).get("httpGet")
            if sp:
                c.check(sp.get("path") == "/healthz", f"{cw}: startupProbe should use /healthz")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            pre = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
            pre_s = int(pre[-1]) if pre and pre[0] in ("sleep", "/bin/sleep") and pre[-1].isdigit() else 0
            c.drain_room(cw, env, grace - pre_s,
                         f"terminationGracePeriodSeconds {grace} (preStop sleep {pre_s}s)")
            if role == "gateway":
                c.check(pre_s > 0, f"{cw}: gateway without a preStop sleep")
            res = ctr.get("resources") or {}
            c.check("requests" in res and "limits" in res, f"{cw}: resources requests/limits missing")
            pod_templates[name] = (labels, ports_by_name)
    c.check(len(images) == 1, f"deploy/k8s: chat workloads use {len(images)} different images: {sorted(images)}")
    # Objects taken as environment variables hold names chat reads; the others (mounted as
    # files) hold file names. A secret setting is read from a mounted file, never from a
    # ConfigMap (or Secret) taken as environment variables.
    for kind, n in sorted(env_sources):
        for key in (configmaps if kind == "ConfigMap" else secrets).get(n, {}):
            c.env_name(f"deploy/k8s: {n}", key)
            c.check(key not in c.cli.secret_env,
                    f"deploy/k8s: {kind} {n} gives the secret {key} as an environment variable; "
                    f"mount it and set {key}_FILE")
    for (kind, name), (path, d) in objs.items():
        if kind == "Service":
            sel = d["spec"].get("selector") or {}
            matches = [n for n, (labels, _) in pod_templates.items()
                       if all(labels.get(k) == v for k, v in sel.items())]
            if c.check(bool(matches), f"{path}: Service/{name} selects no chat Deployment"):
                for p in d["spec"]["ports"]:
                    t = p.get("targetPort", p["port"])
                    ok = all(t in pod_templates[m][1] or t in pod_templates[m][1].values() for m in matches)
                    c.check(ok, f"{path}: Service/{name} targetPort {t} is not a port of {matches}")
        if kind == "PodDisruptionBudget":
            sel = d["spec"]["selector"]["matchLabels"]
            c.check(any(all(labels.get(k) == v for k, v in sel.items()) for labels, _ in pod_templates.values()),
                    f"{path}: PodDisruptionBudget/{name} selects no Deployment")
        if kind == "HorizontalPodAutoscaler":
            check_hpa(c, path, name, d, objs)
        if kind == "Deployment":
            # Spread over nodes and zones, each constraint selecting the Deployment's own pods.
            pod = d["spec"]["template"]["spec"]
            labels = (d["spec"]["template"].get("metadata") or {}).get("labels") or {}
            keys = set()
            for t in pod.get("topologySpreadConstraints") or []:
                sel = (t.get("labelSelector") or {}).get("matchLabels") or {}
                c.check(bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
                        f"{path}: Deployment/{name} spreads by a selector that is not its pods'")
                keys.add(t.get("topologyKey"))
            c.check({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys,
                    f"{path}: Deployment/{name} is not spread over nodes and zones (topologySpreadConstraints)")
    for (kind, name), (path, d) in objs.items():
        if kind == "Deployment":
            hpas = [n for (k, n), (_, h) in objs.items() if k == "HorizontalPodAutoscaler"
                    and h["spec"]["scaleTargetRef"].get("name") == name]
            pdbs = [n for (k, n), (_, p) in objs.items() if k == "PodDisruptionBudget"
                    and all(((d["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(a) == b
                            for a, b in p["spec"]["selector"]["matchLabels"].items())]
            c.check(bool(pdbs), f"{path}: Deployment/{name} has no PodDisruptionBudget")
            if "gateway" in name:
                c.check(bool(hpas), f"{path}: Deployment/{name} (gateways) has no HorizontalPodAutoscaler")


def check_hpa(c, path, name, d, objs):
    """The autoscaler scales a gateway Deployment of these files (never the consumers: the
    partitions bound them), keeps at least two (the PDB lets one go), and scales down one
    pod at a time, slowly (each one drains its connections)."""
    spec = d["spec"]
    ref = spec.get("scaleTargetRef") or {}
    target = objs.get(("Deployment", ref.get("name")))
    if not c.check(ref.get("kind") == "Deployment" and target is not None,
                   f"{path}: HorizontalPodAutoscaler/{name} scales no Deployment of deploy/k8s"):
        return
    args = []
    for ctr in target[1]["spec"]["template"]["spec"]["containers"]:
        args += [str(a) for a in ctr.get("args") or []]
    c.check("consumer" not in args, f"{path}: HorizontalPodAutoscaler/{name} scales consumers")
    lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
    c.check(2 <= lo <= hi, f"{path}: HorizontalPodAutoscaler/{name}: minReplicas {lo} (at least 2) > maxReplicas {hi}")
    down = (spec.get("behavior") or {}).get("scaleDown") or {}
    c.check(down.get("stabilizationWindowSeconds", 300) >= 300,
            f"{path}: HorizontalPodAutoscaler/{name} scales down within 5 minutes of a peak")
    pods = [p for p in down.get("policies") or [] if p.get("type") == "Pods"]
    c.check(bool(pods) and all(p.get("value", 0) <= 1 for p in pods),
            f"{path}: HorizontalPodAutoscaler/{name} may drain more than one gateway at a time")


def has_setting(env, name):
    """A secret setting is given directly or as a file (NAME_FILE)."""
    return name in env or f"{name}_FILE" in env


def k8s_mounts(c, cw, pod, ctr, configmaps, secrets):
    """The container's Secret and ConfigMap mounts: mountPath -> (what, keys, items)."""
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    ctx = pod.get("securityContext") or {}
    mounts = {}
    for m in ctr.get("volumeMounts") or []:
        v = vols.get(m.get("name"))
        if not c.check(v is not None, f"{cw}: volumeMount {m.get('name')} names no pod volume"):
            continue
        if "secret" in v:
            src, name = v["secret"], v["secret"].get("secretName")
            keys = secrets.get(name)
            what = f"Secret {name}"
            mode = src.get("defaultMode")
            if isinstance(mode, int) and not mode & 0o004 and ctx.get("runAsUser", 0) != 0:
                c.check(mode & 0o040 and ctx.get("fsGroup") is not None,
                        f"{cw}: {what} mounted with mode {mode:o}: its user {ctx.get('runAsUser')} "
                        f"reads it only through the group (fsGroup and a group-read mode)")
        elif "configMap" in v:
            src, name = v["configMap"], v["configMap"].get("name")
            keys = configmaps.get(name)
            what = f"ConfigMap {name}"
        else:
            continue
        if not c.check(keys is not None or src.get("optional"), f"{cw}: volume {v['name']} uses unknown {what}"):
            continue
        items = {i["path"]: i["key"] for i in src.get("items") or []}
        mounts[str(m["mountPath"]).rstrip("/")] = (what, keys or {}, items)
    return mounts


_STAND_INS = {}


def in_mount(path, mounts):
    """Is `path` a file inside one of the container's Secret or ConfigMap mounts?"""
    return any(str(path).startswith(m + "/") for m in mounts)


def stand_in_kind(setting):
    """Which stand-in a file setting is checked with ("ca", "cert", "key"), or None when chat
    is to read the file's own contents (a URL, a password)."""
    if setting.endswith("_CA_FILE"):
        return "ca"
    if setting.endswith("_CERT"):
        return "cert"
    if setting.endswith("_KEY"):
        return "key"
    return None


def _self_signed():
    """A fresh self-signed certificate and its key in PEM (openssl), or (None, None)."""
    if not shutil.which("openssl"):
        return None, None
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                            "/CN=check-deploy stand-in", "-keyout", os.path.join(d, "k"),
                            "-out", os.path.join(d, "c")], capture_output=True)
        if r.returncode != 0:
            return None, None
        return read(os.path.join(d, "c")), read(os.path.join(d, "k"))


def stand_in(tmp, kind):
    """A PEM file for `chat config --check` to parse in place of the operator's (its contents
    are theirs; the wiring is what is checked): "ca", the system bundle or a self-signed
    certificate; "cert" and "key", a self-signed client certificate and its key (one pair).
    None: none can be had."""
    if kind == "ca" and "ca" not in _STAND_INS:
        for bundle in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
            if os.path.isfile(bundle):
                _STAND_INS["ca"] = read(bundle)
                break
    if kind not in _STAND_INS:
        if "pair" not in _STAND_INS:
            _STAND_INS["pair"] = _self_signed()
        cert, key = _STAND_INS["pair"]
        _STAND_INS.setdefault("ca", cert)
        _STAND_INS["cert"], _STAND_INS["key"] = cert, key
    if _STAND_INS[kind] is None:
        return None
    path = os.path.join(tmp, f"stand-in-{kind}.pem")
    with open(path, "w", encoding="utf-8") as f:
        f.write(_STAND_INS[kind])
    return path


def mounted_file(c, cw, setting, path, mounts, tmp):
    """The mounted key `path` (of `setting`) points at, copied into `tmp`: the local path for
    `chat config --check`, or None (a failure or a note says why)."""
    path = str(path)
    mp = max((m for m in mounts if path.startswith(m + "/")), key=len, default=None)
    if not c.check(mp is not None, f"{cw}: {setting}={path} is in no mounted Secret or ConfigMap"):
        return None
    what, keys, items = mounts[mp]
    rel = path[len(mp) + 1:]
    key = items.get(rel) if items else rel
    if not c.check(key in keys, f"{cw}: {setting}={path}: {what} has no key {key or rel}"):
        return None
    if stand_in_kind(setting):
        local = stand_in(tmp, stand_in_kind(setting))
        if local is None:
            c.note(f"{cw}: {setting}: no PEM ({stand_in_kind(setting)}) to stand in for {what}'s {key}")
        return local
    if keys[key] is None:
        return None
    local = os.path.join(tmp, re.sub(r"[^A-Za-z0-9_.-]", "_", f"{setting}-{key}"))
    with open(local, "w", encoding="utf-8") as f:
        f.write(keys[key])
    return local


def check_tools(c):
    def tool(argv, what):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            c.note(f"{what}: not installed, skipped")
            return
        out = (r.stdout + r.stderr).strip()
        if c.check(r.returncode == 0, f"{what} failed:\n{out}"):
            c.note(f"{what}: ok")

    if shutil.which("hadolint"):
        tool(["hadolint", "Dockerfile"], "hadolint Dockerfile")
    else:
        c.note("hadolint: not installed, skipped")
    if shutil.which("kubernetes-validate"):
        tool(["kubernetes-validate", "--strict", "--quiet"] + sorted(glob.glob("deploy/k8s/*.yaml")),
             "kubernetes-validate --strict deploy/k8s")
    else:
        c.note("kubernetes-validate: not installed, skipped (pip install kubernetes-validate)")
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        tool(["docker", "compose", "-f", "compose.yaml", "config", "--quiet"], "docker compose config")
    else:
        c.note("docker compose: not available, skipped")


@contextlib.contextmanager
def cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_checks(root, cli, tools=True, out=print):
    """Every check on the deployment files under `root`; returns the Checks."""
    c = Checks(cli, out)
    with cwd(root):
        docs = check_yaml(c)
        bin_src = check_cargo(c)
        image_uid = check_dockerfile(c, bin_src)
        compose, gateways = check_compose(c, docs)
        check_compose_managed(c, docs)
        check_nginx(c, compose, gateways)
        check_k8s(c, docs, image_uid)
        if tools:
            check_tools(c)
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chat-bin", help="the chat binary (default: $CHAT_BIN, or cargo build)")
    p.add_argument("--root", default=REPO, help="the repository (default: this one)")
    a = p.parse_args(argv)
    cli = load_cli(chat_binary(a.chat_bin))
    c = run_checks(a.root, cli)
    print(f"check-deploy: {c.passed} passed, {len(c.failures)} failed "
          f"(against {len(cli.settings)} settings of {cli.chat_bin})")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
