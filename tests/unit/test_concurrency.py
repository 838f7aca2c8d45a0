"""Several `temporal-bundle init` processes racing on one empty directory (compose may start the
bootstrap twice) must leave one consistent bundle: the directory lock serialises them."""

from __future__ import annotations

import json
import subprocess
import sys

from bootstrap.config import load_config
from bootstrap.pki import keys_match, load_cert, load_private_key, signed_by
from bootstrap.plan import leaf_specs
from bootstrap.store import Layout
from bootstrap.tokens import verify_token

RUNS = 4
SKIPPED = ": already exists, skipped"


def test_concurrent_inits_leave_one_consistent_bundle(tmp_path, small_config_text):
    config = tmp_path / "bundle.yaml"
    config.write_text(small_config_text)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bootstrap", "init", "--config", str(config), "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(RUNS)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        results.append((proc.returncode, stdout, stderr))
    for code, stdout, stderr in results:
        assert code == 0, stderr
        assert stderr == ""

    # Exactly one run created the bundle; the others found it complete and skipped everything.
    creators = [stdout for _, stdout, _ in results if "wrote private/ca.pem: created" in stdout]
    assert len(creators) == 1
    for _, stdout, _ in results:
        if stdout is not creators[0]:
            assert all(line.endswith(SKIPPED) for line in stdout.splitlines()), stdout

    layout = Layout(out)
    cfg = load_config(config)
    ca_cert = load_cert(layout.ca_cert.read_bytes(), "ca")
    assert keys_match(ca_cert, load_private_key(layout.ca_key.read_bytes(), "ca key"))
    assert layout.trust_bundle.read_bytes() == layout.ca_cert.read_bytes()
    for spec in leaf_specs(cfg):
        cert_path, key_path = layout.leaf(spec.directory, spec.name)
        cert = load_cert(cert_path.read_bytes(), str(cert_path))
        assert keys_match(cert, load_private_key(key_path.read_bytes(), str(key_path))), spec
        assert signed_by(cert, ca_cert), spec
    jwks = json.loads(layout.jwks.read_text())
    assert len(jwks["keys"]) == 1
    assert sorted(p.stem for p in layout.signing_keys.glob("*.key")) == [jwks["keys"][0]["kid"]]
    for role in cfg.roles:
        verify_token(layout.token(role.name).read_text().strip(), jwks, audience=cfg.jwt.audience)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
