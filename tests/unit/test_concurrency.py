"""Several `temporal-bundle init` processes racing on one empty directory (compose may start the
bootstrap twice) must leave one consistent bundle: the directory lock serialises them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from bootstrap.core.config import load_config
from bootstrap.core.pki import keys_match, load_cert, load_private_key, signed_by
from bootstrap.ops.plan import leaf_specs
from bootstrap.store import Layout, locked
from bootstrap.core.tokens import verify_token

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
        issuer = ca_cert if spec.domain == "server" else load_cert(layout.domain_ca(spec.domain)[0].read_bytes(), spec.domain)
        assert signed_by(cert, issuer), spec
    jwks = json.loads(layout.jwks.read_text())
    assert len(jwks["keys"]) == 1
    assert sorted(p.stem for p in layout.signing_keys.glob("*.key")) == [jwks["keys"][0]["kid"]]
    for role in cfg.roles:
        verify_token(layout.token(role.name).read_text().strip(), jwks, audience=cfg.jwt.audience)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


# --------------------------------------------------------------------------- the lock on failure


def test_failed_run_takes_back_the_lock_and_the_directories_it_created(tmp_path):
    layout = Layout(tmp_path / "a" / "b" / "out")
    with pytest.raises(RuntimeError):
        with locked(layout):
            assert layout.lock_file.exists()
            raise RuntimeError("planning failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_a_lock_file_it_did_not_create(tmp_path):
    layout = Layout(tmp_path)
    layout.lock_file.write_bytes(b"")  # pre-created with its owner by the image's entrypoint
    with pytest.raises(RuntimeError):
        with locked(layout):
            raise RuntimeError("planning failed")
    assert layout.lock_file.exists()


def test_failed_run_keeps_directories_that_received_files(tmp_path):
    layout = Layout(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with locked(layout):
            (layout.root / "trust").mkdir()
            raise RuntimeError("failed half-way")
    assert [p.name for p in layout.root.iterdir()] == ["trust"]


def test_a_waiter_on_a_lock_file_taken_back_relocks_the_real_path(tmp_path):
    """Run A fails on a fresh directory while run B waits on A's lock file: B must not end up
    holding the unlinked file while a third run locks a new one."""
    layout = Layout(tmp_path / "out")
    a_holds, b_started = threading.Event(), threading.Event()
    seen = {}

    def run_a():
        with contextlib.suppress(RuntimeError), locked(layout):
            a_holds.set()
            b_started.wait(10)
            time.sleep(0.2)  # B is blocked in flock on A's file by now
            raise RuntimeError("A fails")

    def run_b():
        a_holds.wait(10)
        b_started.set()
        with locked(layout):
            seen["lock_exists"] = layout.lock_file.exists()
            probe = os.open(layout.lock_file, os.O_RDWR)
            try:
                # A third run: must find the path locked (by B), not free.
                with pytest.raises(BlockingIOError):
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["third_blocked"] = True
            finally:
                os.close(probe)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"lock_exists": True, "third_blocked": True}
