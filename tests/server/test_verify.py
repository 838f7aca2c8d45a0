"""`temporal-bundle verify` against the real server: the production config passes with 0 wrong
pairs; a deliberately weakened one fails and names the pairs; and nothing verify used (tokens,
private keys) shows up in the server's logs or verify's own output."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import yaml

from bootstrap import cli
from bootstrap.core import hsm
from bootstrap.core.verify_plan import TOKEN_ATTACKS
from bootstrap.ops import verify as verify_ops
from tests.support.paths import REPO
from tests.support.cluster import LocalCluster

SERVICES = "temporal,jwks,postgresql"  # what the harness runs: the other listeners are reported, not probed


def verify_argv(cluster, *extra: str) -> list[str]:
    return ["verify", "--config", str(cluster.config_path), "--out", str(cluster.bundle), "--from", "host",
            "--host", "127.0.0.1", "--services", SERVICES, "--deadline", "300", *extra]


@pytest.fixture(scope="module")
def verified(pg_cluster):
    """One in-process run of verify against the PostgreSQL cluster, with every token it minted and
    every forged key it wrote recorded (spies on ops.verify), and its whole output."""
    tokens: list[str] = []
    forged_keys: list[bytes] = []
    attack_tokens, write_leaf = verify_ops.attack_tokens, verify_ops.write_leaf

    def spy_tokens(*args, **kwargs):
        minted = attack_tokens(*args, **kwargs)
        tokens.extend(t for t in minted.values() if t)
        return minted

    def spy_leaf(workdir, name, leaf, *args, **kwargs):
        forged_keys.append(leaf.key_pem())
        return write_leaf(workdir, name, leaf, *args, **kwargs)

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(verify_ops, "attack_tokens", spy_tokens)
        patch.setattr(verify_ops, "write_leaf", spy_leaf)
        code = cli.main(verify_argv(pg_cluster, "--json"))
    return {"cluster": pg_cluster, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "tokens": tokens, "forged_keys": forged_keys}


def test_verify_passes_against_the_running_cluster(verified):
    report = json.loads(verified["stdout"])
    wrong = [r for r in report["rows"] if not r["ok"]]
    print(f"\nverify on the PostgreSQL cluster: {report['pairs']} pairs, {report['wrong']} wrong, {report['seconds']}s")
    assert verified["code"] == 0, "\n".join(f"{r['listener']} <- {r['credential']}: {r['got']}" for r in wrong)
    assert report["wrong"] == 0 and report["passed"] and not report["unprovable"]
    listeners = {r["listener"] for r in report["rows"]}
    # Every listener of the three services the harness runs, the internal ones included.
    for name in ("frontend gRPC", "frontend HTTP API", "internal-frontend", "history membership", "metrics", "JWKS",
                 "PostgreSQL"):
        assert name in listeners, name
    tokens = {r["credential"].removeprefix("token: "): r["got"] for r in report["rows"] if r["credential"].startswith("token: ")}
    assert set(tokens) == set(TOKEN_ATTACKS)
    assert tokens["valid"] == "accepted"
    assert all(got.startswith("denied") for name, got in tokens.items() if name != "valid"), tokens
    assert report["pairs"] >= 14 * 20 + len(TOKEN_ATTACKS)
    skipped = {s["listener"] for s in report["skipped"]}
    assert {"codec server", "Web UI", "UI gate (gRPC)"} <= skipped  # said, not passed over in silence


def test_verify_signs_its_expired_certificates_and_tokens_inside_the_token(on_token):
    """keys.backend pkcs11: the CA and signing keys never leave the SoftHSM2 token; verify's
    expired certificates and attack tokens are signed there, and the matrix still holds."""
    assert hsm.is_reference((on_token.bundle / "private" / "ca-internode.key").read_bytes())
    argv = verify_argv(on_token, "--json")
    argv[argv.index("--services") + 1] = "temporal,jwks"  # SQLite: no PostgreSQL
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    report = json.loads(out.getvalue())
    wrong = [f"{r['listener']} <- {r['credential']}: {r['got']}" for r in report["rows"] if not r["ok"]]
    assert code == 0 and not wrong, wrong
    refused = {(r["listener"], r["credential"]) for r in report["rows"] if r["got"].startswith("refused")}
    assert ("history", "expired-internode") in refused and ("frontend gRPC", "expired-client") in refused
    assert {r["credential"]: r["got"] for r in report["rows"]}["token: valid"] == "accepted"


def weakened(cluster: LocalCluster) -> None:
    """After init: the frontend no longer requires a client certificate, and no authorizer."""
    path = cluster.bundle / "config" / "temporal.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["global"]["tls"]["frontend"]["server"]["requireClientAuth"] = False
    doc["global"].pop("authorization")
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def weak_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster-weakened"), after_init=weakened).start_registered()
    yield cluster
    cluster.stop()


def test_verify_fails_and_names_the_pairs_of_a_weakened_frontend(weak_cluster):
    argv = verify_argv(weak_cluster)
    argv[argv.index("--services") + 1] = "temporal,jwks"  # SQLite: no PostgreSQL
    result = subprocess.run([sys.executable, "-m", "bootstrap", *argv], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    print(result.stdout[-4000:])
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    wrong = set(re.findall(r"^WRONG: (.+?): expected", result.stdout, re.M))
    assert "frontend gRPC <- no certificate" in wrong
    assert "frontend HTTP API <- no certificate" in wrong
    assert "frontend gRPC, namespace default <- token: no token" in wrong
    assert "frontend gRPC, namespace default <- token: alg none" in wrong
    # Only the frontend was weakened: the internode listeners still pass every pair.
    assert not any(pair.startswith(("history", "internal-frontend", "matching", "JWKS")) for pair in wrong), wrong
    summary = re.search(r"verify from host: (\d+) pairs, (\d+) wrong", result.stdout)
    assert summary and int(summary.group(2)) == len(re.findall(r"^WRONG: .+ <- ", result.stdout, re.M))


# --------------------------------------------------------------------------- item 8: nothing leaks


def pem_bodies(pem: bytes) -> list[str]:
    """The base64 lines of a PEM private key (each long enough to be unique)."""
    text = pem.decode("ascii", errors="replace")
    return [line for line in text.splitlines() if len(line) >= 40 and not line.startswith("-----")]


def secrets_of(verified) -> dict[str, str]:
    cluster = verified["cluster"]
    secrets = {}
    for index, token in enumerate(verified["tokens"]):
        secrets[f"token {index}"] = token
        if token.split(".")[-1]:
            secrets[f"token {index} signature"] = token.split(".")[-1]
    keys = [(str(p.relative_to(cluster.bundle)), p.read_bytes()) for p in cluster.bundle.rglob("*.key")]
    keys += [(f"forged key {i}", pem) for i, pem in enumerate(verified["forged_keys"])]
    for name, pem in keys:
        for line_no, line in enumerate(pem_bodies(pem)):
            secrets[f"{name} line {line_no}"] = line
    return secrets


def hits(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def test_no_token_or_private_key_in_any_log_or_in_verifys_output(verified):
    secrets = secrets_of(verified)
    assert len(verified["tokens"]) == len(TOKEN_ATTACKS) - 1  # every token but "no token"
    assert len(verified["forged_keys"]) == 5  # the foreign CA's leaf, an expired one per domain
    assert any(name.startswith("private/") for name in secrets)  # the CA and signing keys are searched for
    # The search can fail: a planted token and key line are found.
    assert hits(f"log line {verified['tokens'][0]} end", secrets)
    assert hits(next(v for n, v in secrets.items() if "private/" in n), secrets)
    cluster = verified["cluster"]
    logs = {str(p): p.read_text(errors="replace") for p in cluster.workdir.glob("*.log")}
    logs[str(cluster.postgres.workdir / "postgres.log")] = (cluster.postgres.workdir / "postgres.log").read_text(errors="replace")
    logs["verify stdout"], logs["verify stderr"] = verified["stdout"], verified["stderr"]
    assert any("temporal-server" in name for name in logs) and sum(len(t) for t in logs.values()) > 10_000
    found = {name: hits(text, secrets) for name, text in logs.items()}
    print(f"\nsearched {len(logs)} logs ({sum(len(t) for t in logs.values())} bytes) for {len(secrets)} secrets")
    assert not any(found.values()), {name: names for name, names in found.items() if names}
