#!/usr/bin/env python3
"""Fails if Cargo.toml's rust-version is lower than what the locked dependencies need.

Reads `cargo metadata --locked` for the platform we build on (all features: the bench and
autobahn builds count too), takes the highest `rust-version` among the packages in the
resolved graph, and compares it with ours. Also refuses `"0"`/`"*"` requirements in
Cargo.toml, which say nothing about the version we were built and tested with.

Usage: scripts/check_msrv.py   (exit 0: ok; 1: too low or a vague requirement)
"""
import json
import re
import subprocess
import sys
import tomllib


def version_key(v):
    parts = [int(re.match(r"\d+", p).group()) for p in v.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    with open("Cargo.toml", "rb") as f:
        manifest = tomllib.load(f)
    ours = manifest["package"]["rust-version"]
    host = next(
        line.split(":", 1)[1].strip()
        for line in subprocess.run(
            ["rustc", "-vV"], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("host:")
    )
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features",
             "--filter-platform", host],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    resolved = {n["id"] for n in meta["resolve"]["nodes"]}
    needs = [
        (p["rust_version"], p["name"], p["version"])
        for p in meta["packages"]
        if p["id"] in resolved and p.get("rust_version") and p["name"] != manifest["package"]["name"]
    ]
    highest = max(needs, key=lambda t: version_key(t[0]))
    failed = False
    if version_key(ours) < version_key(highest[0]):
        print(f"check-msrv: Cargo.toml says rust-version = {ours}, but {highest[1]} "
              f"{highest[2]} needs {highest[0]}")
        failed = True
    else:
        print(f"check-msrv: rust-version {ours} covers every locked dependency "
              f"(highest: {highest[1]} {highest[2]} needs {highest[0]})")
    for table in ("dependencies", "dev-dependencies", "build-dependencies"):
        for name, spec in manifest.get(table, {}).items():
            req = spec if isinstance(spec, str) else spec.get("version")
            if req is not None and req.strip() in ("0", "*", ""):
                print(f"check-msrv: [{table}] {name} = {req!r} names no real version")
                failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
