"""Runs INSIDE the attacker's container (the bundle image, on the compose `edge` network only, with
the bundle's certificate volumes and the test's forged certificates mounted read-only). Each
(listener, credential) probe is `temporal-bundle verify`'s own (bootstrap/ops/verify_probe.py, installed
in the image); the namespace attempts use `temporal` (the CLI).

    python3 -m tests.support.attack_probe matrix PLAN.json      every (listener, credential) probe
    python3 -m tests.support.attack_probe namespaces PLAN.json  namespace creation attempts

PLAN.json is written by tests/docker/test_edge_attacks.py, which also holds the expectations:
this side only reports what happened, as one JSON object on stdout.

Outcomes of one probe:
    unreachable: ...         name does not resolve, connection refused, no route, connect timeout
    admitted                 TLS handshake done and the server answered the bytes sent after it
                             (gRPC: its HTTP/2 SETTINGS; HTTPS: an HTTP response); membership
                             (TChannel over TLS) says nothing first, so silence without an alert
    refused: ...             a TLS alert, a reset or EOF, during or after the handshake (with TLS
                             1.3 the server's verdict on the client cert arrives after it)
    client-verify-error: ... OUR check of the server's certificate failed: the probe used the wrong
                             roots or the server presents the wrong cert; never a valid answer
    plaintext-http           plain HTTP answered (plaintext listeners)
    silent / error: ...      anything else; never a valid answer either
Every probe is bounded (connect, handshake and read timeouts) and the whole run by a deadline:
pairs not tried in time are reported as "not tried".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bootstrap.core.verify_plan import Credential, Pair, Probe
from bootstrap.ops.verify_probe import probe_pair


def probe(spec: dict) -> str:
    """One (listener, credential) probe of the plan, run by `temporal-bundle verify`'s own probe."""
    credential = Credential(spec["id"], "", "", cert=spec.get("cert") or None, key=spec.get("key") or None)
    target = Probe(spec["host"], spec["port"], spec["mode"], spec["server_name"], spec["verify_ca"],
                   spec.get("db_user", "temporal"))
    return probe_pair(Pair(spec["id"], credential, "", target))


def matrix(plan: dict) -> dict:
    deadline = time.monotonic() + plan["deadline_s"]
    results = {}
    for spec in plan["probes"][: plan["max_pairs"]]:
        if time.monotonic() > deadline:
            results[spec["id"]] = "not tried: deadline"
            continue
        started = time.monotonic()
        results[spec["id"]] = probe(spec)
        results[spec["id"] + "#s"] = round(time.monotonic() - started, 3)
    return {"ok": True, "results": results}


def namespaces(plan: dict) -> dict:
    """`temporal operator ...` attempts: each {id, argv, token_file?}; exit code and output."""
    out = {}
    env = {**os.environ, "HOME": "/tmp"}
    for attempt in plan["attempts"]:
        argv = list(attempt["argv"])
        if attempt.get("token_file"):
            with open(attempt["token_file"]) as f:
                argv += ["--api-key", f.read().strip()]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=attempt.get("timeout", 60), env=env)
            out[attempt["id"]] = {"exit": result.returncode, "output": (result.stdout + result.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            out[attempt["id"]] = {"exit": None, "output": "timed out"}
    return {"ok": True, "results": out}


def main() -> int:
    command, plan_path = sys.argv[1:3]
    with open(plan_path) as f:
        plan = json.load(f)
    out = matrix(plan) if command == "matrix" else namespaces(plan)
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
