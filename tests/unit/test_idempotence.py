"""Re-running is safe (getsentry/self-hosted style): a second run changes nothing at all, a file we
cannot recognise as ours is never replaced without --force, a stale leaf is re-issued with its
reason while the CA stays, and every file gets its mode whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bootstrap.ops.plan import DOMAINS
from bootstrap.store import Layout
from bootstrap.core.pki import keys_match, load_cert, sans_of, signed_by
from bootstrap.ops.render import GENERATED_MARK

SKIPPED = ": already exists, skipped"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- idempotence


def test_second_init_changes_nothing_and_says_so(fresh_bundle, snap):
    before = snap(fresh_bundle.root)
    result = fresh_bundle.run("init")
    assert result.code == 0 and result.err == ""
    lines = result.out_lines
    assert lines and all(line.endswith(SKIPPED) for line in lines), [l for l in lines if not l.endswith(SKIPPED)]
    # One line per file init manages: everything except the lock file.
    managed = {str(p.relative_to(fresh_bundle.root)) for p in files_under(fresh_bundle.root)} - {".bundle.lock"}
    assert {line[: -len(SKIPPED)] for line in lines} == managed
    assert snap(fresh_bundle.root) == before  # bytes, modes and mtimes


@pytest.mark.parametrize("command", ["generate-certs", "mint-tokens", "render-config"])
def test_each_command_is_idempotent_after_init(fresh_bundle, snap, command):
    before = snap(fresh_bundle.root)
    result = fresh_bundle.run(command)
    assert result.code == 0, result.err
    assert all(line.endswith(SKIPPED) for line in result.out_lines)
    assert snap(fresh_bundle.root) == before


def test_quiet_second_run_prints_nothing(fresh_bundle):
    result = fresh_bundle.run("init", "--quiet")
    assert result.code == 0 and result.out == "" and result.err == ""


def test_first_run_reports_every_file_as_created(tmp_path, config_file, cli):
    result = cli("init", "--config", config_file, "--out", tmp_path / "out")
    assert result.code == 0
    assert all(line.startswith("wrote ") and line.endswith(": created") for line in result.out_lines)


# --------------------------------------------------------------------------- no clobbering


def _garbage_cases():
    return {
        "leaf-cert": (lambda layout: layout.leaf("server", "frontend")[0], b"-----BEGIN CERTIFICATE-----\nxx\n", "generate-certs"),
        "leaf-key": (lambda layout: layout.leaf("clients", "worker")[1], b"garbage", "generate-certs"),
        "token": (lambda layout: layout.token("worker"), b"this is not a jwt\n", "mint-tokens"),
        "token-binary": (lambda layout: layout.token("system"), b"\xff\xfe\x00", "mint-tokens"),
        "jwks": (lambda layout: layout.jwks, b"<html>not json</html>\n", "generate-certs"),
        "jwks-json-but-not-jwks": (lambda layout: layout.jwks, b'{"hello": "world"}\n', "generate-certs"),
        "trust-bundle": (lambda layout: layout.trust_bundle, b"garbage\n", "generate-certs"),
        "temporal-yaml": (lambda layout: layout.config_dir / "temporal.yaml", None, "render-config"),
    }


GARBAGE = _garbage_cases()


def _plant(bundle, plant_file, case: str) -> tuple[Path, bytes]:
    locate, garbage, _ = GARBAGE[case]
    path = locate(bundle.layout)
    if garbage is None:  # a hand-edited temporal.yaml: our header removed, a change made
        text = path.read_text()
        assert text.startswith("# " + GENERATED_MARK)
        garbage = ("\n".join(text.splitlines()[1:]) + "\n# my local tweak\n").encode()
    plant_file(path, garbage)
    return path, garbage


@pytest.mark.parametrize("case", GARBAGE)
def test_unrecognised_file_is_never_replaced_without_force(fresh_bundle, snap, plant_file, case):
    path, garbage = _plant(fresh_bundle, plant_file, case)
    before = snap(fresh_bundle.root)
    for command in ("init", GARBAGE[case][2]):
        line = fresh_bundle.run(command).assert_one_error("--force")
        assert fresh_bundle.layout.relative(path) in line or str(path) in line, line
        assert snap(fresh_bundle.root) == before
    assert path.read_bytes() == garbage


@pytest.mark.parametrize("case", GARBAGE)
def test_force_replaces_the_unrecognised_file(fresh_bundle, plant_file, case):
    path, garbage = _plant(fresh_bundle, plant_file, case)
    command = GARBAGE[case][2]
    result = fresh_bundle.run(command, "--force")
    assert result.code == 0, result.err
    assert path.read_bytes() != garbage
    assert f"wrote {fresh_bundle.layout.relative(path)}" in result.out
    # The bundle is whole again. (generate-certs --force also replaced the signing key, so the next
    # init re-mints the tokens; the run after that has nothing left to do.)
    assert fresh_bundle.run("init").code == 0
    again = fresh_bundle.run("init")
    assert again.code == 0, again.err
    assert all(line.endswith(SKIPPED) for line in again.out_lines), again.out


def test_force_init_replaces_everything_including_the_ca(fresh_bundle):
    old_ca = fresh_bundle.layout.ca_cert.read_bytes()
    old_kid = fresh_bundle.layout.active_kid.read_text()
    result = fresh_bundle.run("init", "--force")
    assert result.code == 0, result.err
    assert fresh_bundle.layout.ca_cert.read_bytes() != old_ca
    assert fresh_bundle.layout.active_kid.read_text() != old_kid
    assert "removed private/jwt/" in result.out  # the old signing key is dropped
    assert not fresh_bundle.layout.signing_key(old_kid.strip()).exists()
    for spec in fresh_bundle.specs():
        cert, key = fresh_bundle.leaf(spec.directory, spec.name)
        assert signed_by(cert, fresh_bundle.ca_of(spec.domain).cert) and keys_match(cert, key)


def test_our_cert_beside_a_mismatched_key_is_reissued_as_an_interrupted_write(fresh_bundle, plant_file):
    """Cert and key both ours but not a pair (a crash between the two writes): re-issue."""
    cert_path, key_path = fresh_bundle.layout.leaf("server", "frontend")
    plant_file(cert_path, fresh_bundle.layout.leaf("jwks", "server")[0].read_bytes())
    plant_file(key_path, fresh_bundle.layout.leaf("clients", "worker")[1].read_bytes())
    # The cert is ours (signed by the CA): the pair is treated as an interrupted write and re-issued.
    result = fresh_bundle.run("generate-certs")
    assert result.code == 0, result.err
    assert "re-issued: key and cert did not match (interrupted write)" in result.out
    cert, key = fresh_bundle.leaf("server", "frontend")
    assert keys_match(cert, key)


def test_foreign_cert_with_a_mismatched_key_is_refused(fresh_bundle, snap, plant_file, foreign_ca):
    cert_path, _ = fresh_bundle.layout.leaf("server", "frontend")
    plant_file(cert_path, foreign_ca.issue_cert("temporal").cert_pem())
    before = snap(fresh_bundle.root)
    fresh_bundle.run("generate-certs").assert_one_error("do not belong together", "--force")
    assert snap(fresh_bundle.root) == before


def test_missing_half_of_a_pair_is_refused(fresh_bundle, snap):
    _, key_path = fresh_bundle.layout.leaf("clients", "client")
    key_path.unlink()
    before = snap(fresh_bundle.root)
    fresh_bundle.run("generate-certs").assert_one_error("client.key is missing but its partner exists")
    assert snap(fresh_bundle.root) == before


def test_a_deleted_pair_is_simply_recreated(fresh_bundle):
    cert_path, key_path = fresh_bundle.layout.leaf("clients", "client")
    cert_path.unlink()
    key_path.unlink()
    result = fresh_bundle.run("generate-certs")
    assert result.code == 0
    assert "wrote clients/client.pem: created" in result.out
    assert "private/ca.pem" + SKIPPED in result.out


# --------------------------------------------------------------------------- staleness


def test_changed_frontend_sans_reissue_the_frontend_and_keep_the_ca(fresh_bundle, snap):
    layout = fresh_bundle.layout
    before = snap(fresh_bundle.root)
    fresh_bundle.config_path.write_text(
        fresh_bundle.config_path.read_text() + "cluster: {frontend_sans: [temporal.example.com, 10.0.0.5]}\n"
    )
    result = fresh_bundle.run("init")
    assert result.code == 0, result.err
    assert "wrote server/frontend.pem: re-issued: SANs differ from the config" in result.out
    assert "wrote server/frontend.key: re-issued: SANs differ from the config" in result.out
    for kept in ("private/ca.pem", "private/ca.key", "trust/ca.pem", "server/internode.pem", "tokens/worker.jwt"):
        assert kept + SKIPPED in result.out
    after = snap(fresh_bundle.root)
    for kept in ("private/ca.pem", "private/ca.key", "trust/ca.pem", "server/internode.pem", "server/internode.key"):
        assert after[kept] == before[kept]
    cert = load_cert((layout.root / "server" / "frontend.pem").read_bytes(), "frontend")
    assert set(sans_of(cert)) == {"temporal", "temporal.example.com", "10.0.0.5", "localhost", "127.0.0.1"}
    assert signed_by(cert, fresh_bundle.ca.cert)
    # And the run after that is quiet again.
    assert all(line.endswith(SKIPPED) for line in fresh_bundle.run("init").out_lines)


def test_leaf_from_another_ca_is_reissued(fresh_bundle, plant_file, foreign_ca):
    leaf = foreign_ca.issue_cert("temporal-bundle:worker", common_name="temporal-bundle:worker", usage="client")
    cert_path, key_path = fresh_bundle.layout.leaf("clients", "worker")
    plant_file(cert_path, leaf.cert_pem())
    plant_file(key_path, leaf.key_pem())
    result = fresh_bundle.run("generate-certs")
    assert result.code == 0, result.err
    assert "wrote clients/worker.pem: re-issued: issued by another CA" in result.out


def test_changed_permissions_remint_the_token(fresh_bundle):
    fresh_bundle.config_path.write_text(
        "namespaces: [{name: default}, {name: other}]\n"
        "roles:\n"
        "  system: {permissions: [temporal-system:admin], token_lifetime: 1h}\n"
        "  worker: {permissions: [default:write], token_lifetime: 24h}\n"
        "  client: {permissions: [default:write, other:write], token_lifetime: 24h}\n"
    )
    result = fresh_bundle.run("mint-tokens")
    assert result.code == 0, result.err
    assert "wrote tokens/worker.jwt: re-minted: permissions differ from the config" in result.out
    assert "tokens/client.jwt" + SKIPPED in result.out


# --------------------------------------------------------------------------- modes and temp files


def assert_modes(root: Path) -> None:
    assert mode(root / "private") == 0o700
    assert mode(root / "private" / "jwt") == 0o700
    for directory in ("server", "clients", "trust", "jwks", "tokens", "config", "ui", "postgres", "dbclient", "registrar"):
        # Consumers running as another uid mount these: the umask must not close them.
        assert mode(root / directory) == 0o755, directory
    for domain in DOMAINS:
        assert mode(Layout(root).domain_ca(domain)[1]) == 0o400, domain
    for path in files_under(root):
        rel = path.relative_to(root)
        if rel.parts[0] == "private" and path.name.startswith("ca") and path.suffix == ".key":
            continue
        if path.suffix == ".key":
            assert mode(path) == 0o600, rel
        elif path.suffix == ".pem":
            assert mode(path) == 0o644, rel
        elif path.suffix == ".jwt":
            assert mode(path) == 0o600, rel
    for name in ("jwks/jwks.json", "config/temporal.yaml", "config/dynamic_config.yaml", "config/compose.env"):
        assert mode(root / name) == 0o644, name


def assert_no_temp_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name != ".bundle.lock")]
    assert leftovers == []


def test_modes(fresh_bundle):
    assert_modes(fresh_bundle.root)
    assert_no_temp_files(fresh_bundle.root)


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o027])
def test_modes_do_not_depend_on_the_umask(tmp_path, config_file, cli, umask):
    old = os.umask(umask)
    try:
        result = cli("init", "--config", config_file, "--out", tmp_path / "out")
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert_modes(tmp_path / "out")


def test_no_temp_files_after_a_rewrite(fresh_bundle):
    assert fresh_bundle.run("init", "--force").code == 0
    assert_no_temp_files(fresh_bundle.root)
    assert_modes(fresh_bundle.root)


def test_failed_write_leaves_no_temp_file(tmp_path):
    """The rename fails (the target is a non-empty directory): the temp file must go too."""
    from bootstrap import store

    target = tmp_path / "dir" / "file.pem"
    (target / "occupied").mkdir(parents=True)
    with pytest.raises(OSError):
        store.write_atomic(target, b"data", 0o644, tmp_path)
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["file.pem"]
    assert target.is_dir()


def test_a_write_that_fails_is_one_bundle_error_naming_the_file(tmp_path):
    """A full or broken disk surfaces as `error: cannot write <file>: <reason>`, not a traceback
    (the docker tier fills a real tmpfs: tests/docker/test_faults.py)."""
    from bootstrap import store
    from bootstrap.errors import BundleError

    target = tmp_path / "tokens" / "client.jwt"
    (target / "occupied").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"^cannot write tokens/client.jwt: "):
        store.apply(store.Layout(tmp_path), [store.Write(target, b"x", 0o600, "created")])
