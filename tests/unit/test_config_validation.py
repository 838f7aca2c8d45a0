"""Every bad input stops the run with exit 1, exactly one `error: ` line on stderr, nothing on
stdout, and nothing written: the output directory does not appear, or an existing bundle stays
byte-identical (contents, modes, mtimes)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from bootstrap.core.config import parse_config
from bootstrap.errors import BundleError
from bootstrap.core.pki import CA, utcnow

NS = "namespaces: [{name: default}, {name: other}]\n"


def roles(system="[temporal-system:admin]", worker="[default:write]", client="[default:write]") -> str:
    return (
        "roles:\n"
        f"  system: {{permissions: {system}}}\n"
        f"  worker: {{permissions: {worker}}}\n"
        f"  client: {{permissions: {client}}}\n"
    )


BAD_CONFIGS = {
    "unknown-top-level-key": (NS + "bogus: 1\n", ["unknown key 'bogus'"]),
    "unknown-nested-key-pki": (NS + "pki: {key_algoritm: rsa-3072}\n", ["pki", "unknown key 'key_algoritm'"]),
    "unknown-nested-key-cluster": (NS + "cluster: {frontend_hots: x}\n", ["cluster", "unknown key 'frontend_hots'"]),
    "unknown-nested-key-namespace": ("namespaces: [{name: default, retension: 3d}]\n", ["namespaces[0]", "retension"]),
    "unknown-nested-key-role": (
        NS + "roles:\n  system: {permissions: [temporal-system:admin], lifetime: 1h}\n"
        "  worker: {permissions: [default:write]}\n  client: {permissions: [default:write]}\n",
        ["roles: system", "unknown key 'lifetime'"],
    ),
    "bad-duration-words": (NS + "pki: {leaf_lifetime: 90 days}\n", ["leaf_lifetime", "invalid duration"]),
    "bad-duration-no-unit": (NS + "jwt: {refresh_interval: 60}\n", ["refresh_interval", "invalid duration"]),
    "bad-duration-zero": (NS + "pki: {renew_before: 0d}\n", ["renew_before"]),
    "bad-duration-role": (
        NS + "roles:\n  system: {permissions: [temporal-system:admin], token_lifetime: soon}\n"
        "  worker: {permissions: [default:write]}\n  client: {permissions: [default:write]}\n",
        ["token_lifetime", "invalid duration"],
    ),
    "namespace-with-space": ("namespaces: [{name: bad name}]\n", ["invalid namespace name 'bad name'"]),
    "namespace-with-colon": ("namespaces: [{name: 'a:b'}]\n", ["invalid namespace name 'a:b'"]),
    "namespace-temporal-system": ("namespaces: [{name: temporal-system}]\n", ["invalid namespace name 'temporal-system'"]),
    "namespace-twice": ("namespaces: [{name: default}, {name: default}]\n", ["listed twice"]),
    "namespace-retention-too-short": ("namespaces: [{name: default, retention: 1h}]\n", ["retention"]),
    "worker-role-only-worker": (NS + roles(worker="[default:worker, other:worker]"), ["roles: worker", "<ns>:write"]),
    "system-admin-instead-of-temporal-system": (
        NS + roles(system="['system:admin']"),
        ["'system:admin'", "temporal-system"],
    ),
    "system-role-without-cluster-admin": (NS + roles(system="[default:admin]"), ["temporal-system:admin"]),
    "unknown-namespace-in-permission": (NS + roles(client="[nope:write]"), ["'nope:write'", "not configured"]),
    "unknown-role-in-permission": (NS + roles(client="[default:owner]"), ["'default:owner'", "role must be one of"]),
    "permission-not-ns-role": (NS + roles(client="[default]"), ["'default'", "<namespace>:<role>"]),
    "required-role-missing": (
        NS + "roles:\n  system: {permissions: [temporal-system:admin]}\n  worker: {permissions: [default:write]}\n",
        ["'client' role is required"],
    ),
    "invalid-yaml": (NS + "pki: {key_algorithm: [\n", ["invalid YAML"]),
    "yaml-not-a-mapping": ("- just\n- a list\n", ["expected a mapping"]),
    "unsupported-key-algorithm": (NS + "pki: {key_algorithm: ed25519}\n", ["key_algorithm", "'ed25519'"]),
    "rs384-jwt-algorithm": (NS + "jwt: {algorithm: RS384}\n", ["algorithm", "'RS384'", "ES256, RS256"]),
    "hs256-jwt-algorithm": (NS + "jwt: {algorithm: HS256}\n", ["'HS256'"]),
    "leaf-outlives-ca": (NS + "pki: {leaf_lifetime: 400d, ca_lifetime: 365d}\n", ["leaf_lifetime must not exceed ca_lifetime"]),
    "bad-san": (NS + "cluster: {frontend_sans: ['not a host']}\n", ["'not a host'"]),
    "bad-port": (NS + "network: {frontend_port: 70000}\n", ["frontend_port"]),
    "duplicate-port": (NS + "network: {history_port: 7233}\n", ["is used by two Temporal listeners"]),
    "sqlite-without-path": (NS + "persistence: {driver: sqlite}\n", ["sqlite_path"]),
    "relative-bundle-dir": (NS + "bundle_dir: bundle\n", ["bundle_dir must be an absolute path"]),
    "keys-vault-backend": (NS + "keys: {backend: vault}\n", ["keys", "file, pkcs11", "'vault'"]),
    "keys-pkcs11-without-module": (
        NS + "keys: {backend: pkcs11, pkcs11: {token_label: t, pin_file: /p}}\n", ["module is required"]),
    "keys-pkcs11-relative-pin-file": (
        NS + "keys: {backend: pkcs11, pkcs11: {module: /m.so, token_label: t, pin_file: pin}}\n", ["pin_file must be an absolute path"]),
    "keys-pkcs11-pin-in-config": (
        NS + "keys: {backend: pkcs11, pkcs11: {module: /m.so, token_label: t, pin: '1234'}}\n", ["unknown key 'pin'"]),
    # Found by tests/unit/test_fuzz_config.py: a group that is not a name was a TypeError traceback.
    "oidc-admin-group-a-list": (NS + "oidc: {admin: {groups: [[admins]]}}\n", ["oidc: admin", "groups"]),
    "oidc-user-group-a-mapping": (
        NS + "oidc:\n  users: [{username: ana, email: ana@example.com, groups: [{readers: 1}],\n"
        "           password_hash: '$2b$12$mP2bg6ou44ckx/yzRSg5XejAc7jgemoDSJPQbfCcM0Y3.BhDq2.le'}]\n",
        ["users[0]", "groups"]),
    "workload-binding-issuer-a-list": (
        NS + "workload_identity:\n  issuers: [{name: cluster, issuer: 'https://kubernetes.default.svc', audience: a}]\n"
        "  bindings: [{issuer: [cluster], namespace: default, service_account: w, permissions: ['default:write']}]\n",
        ["bindings[0]", "issuer"]),
}

COMMANDS = ["init", "generate-certs", "mint-tokens", "render-config"]


@pytest.mark.parametrize("text, fragments", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_is_one_error_line_and_writes_nothing(text, fragments, write_config, tmp_path, cli):
    config = write_config(text)
    out = tmp_path / "out"
    line = cli("init", "--config", config, "--out", out).assert_one_error(*fragments)
    assert not out.exists(), "a failed run must not create the output directory"
    if "invalid YAML" not in fragments:
        assert str(config) in line, "the error names the config file"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_validates_before_writing(command, write_config, tmp_path, cli):
    config = write_config(NS + "bogus: 1\n")
    out = tmp_path / "out"
    cli(command, "--config", config, "--out", out).assert_one_error("unknown key 'bogus'")
    assert not out.exists()


def test_bad_config_leaves_an_existing_bundle_byte_identical(fresh_bundle, snap, cli):
    before = snap(fresh_bundle.root)
    fresh_bundle.config_path.write_text(NS + roles(system="['system:admin']"))
    for command in COMMANDS:
        cli(command, "--config", fresh_bundle.config_path, "--out", fresh_bundle.root).assert_one_error("system:admin")
    assert snap(fresh_bundle.root) == before


def test_missing_config_file(tmp_path, cli):
    out = tmp_path / "out"
    cli("init", "--config", tmp_path / "nope.yaml", "--out", out).assert_one_error("cannot read config", "nope.yaml")
    assert not out.exists()


def test_config_file_that_is_a_directory(tmp_path, cli):
    out = tmp_path / "out"
    cli("init", "--config", tmp_path, "--out", out).assert_one_error("cannot read config")
    assert not out.exists()


def test_invalid_yaml_names_the_line(write_config, tmp_path, cli):
    config = write_config("namespaces:\n  - {name: default}\n  - {name: [\n")
    line = cli("init", "--config", config, "--out", tmp_path / "out").assert_one_error("invalid YAML at line")
    assert "Traceback" not in line


def test_empty_config_means_defaults(write_config, tmp_path, cli):
    config = write_config("")
    result = cli("generate-certs", "--config", config, "--out", tmp_path / "out")
    assert result.code == 0, result.err


# --------------------------------------------------------------------------- mint-tokens --role


def test_unknown_role_on_a_fresh_directory_writes_nothing(config_file, tmp_path, cli):
    out = tmp_path / "out"
    cli("mint-tokens", "--config", config_file, "--out", out, "--role", "nope").assert_one_error(
        "unknown role 'nope'", "system, worker, client"
    )
    assert not out.exists()


def test_unknown_role_leaves_the_bundle_untouched(fresh_bundle, snap):
    before = snap(fresh_bundle.root)
    fresh_bundle.run("mint-tokens", "--role", "worker", "--role", "nope").assert_one_error("unknown role 'nope'")
    assert snap(fresh_bundle.root) == before


# --------------------------------------------------------------------------- corrupt state on disk


@pytest.mark.parametrize("command", ["init", "generate-certs"])
@pytest.mark.parametrize(
    "what, garbage",
    [
        ("ca_key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"),
        ("ca_key", b"\x00\x01binary"),
        ("ca_key", b""),
        ("ca_cert", b"not a certificate\n"),
    ],
    ids=["ca-key-bad-pem", "ca-key-binary", "ca-key-empty", "ca-cert-garbage"],
)
def test_corrupt_ca_is_an_error_and_changes_nothing(fresh_bundle, snap, plant_file, command, what, garbage):
    plant_file(getattr(fresh_bundle.layout, what), garbage)
    before = snap(fresh_bundle.root)
    fresh_bundle.run(command).assert_one_error("--force")
    assert snap(fresh_bundle.root) == before


# --------------------------------------------------------------------------- trust-domain CAs


@pytest.mark.parametrize("command", ["init", "generate-certs", "rotate"])
@pytest.mark.parametrize("problem", ["missing", "corrupt", "equal-to-client-ca", "key-of-another-ca"])
def test_bad_internode_ca_is_one_clear_error_and_changes_nothing(fresh_bundle, snap, plant_file, command, problem):
    layout = fresh_bundle.layout
    cert_path, key_path = layout.domain_ca("internode")
    client_cert, client_key = layout.domain_ca("client")
    if problem == "missing":
        cert_path.unlink()
        key_path.unlink()
        expected = "the internode CA) is missing but"
    elif problem == "corrupt":
        plant_file(cert_path, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        expected = "not a readable PEM certificate"
    elif problem == "equal-to-client-ca":
        plant_file(cert_path, client_cert.read_bytes())
        plant_file(key_path, client_key.read_bytes())
        expected = "trust domains need CAs of their own"
    else:
        plant_file(key_path, CA.create().key_pem())
        expected = "do not belong together"
    before = snap(fresh_bundle.root)
    extra = ("--kind", "certs") if command == "rotate" else ()
    fresh_bundle.run(command, *extra).assert_one_error(expected)
    assert snap(fresh_bundle.root) == before


def test_ca_key_of_another_ca_is_an_error(fresh_bundle, snap, plant_file):
    plant_file(fresh_bundle.layout.ca_key, CA.create().key_pem())
    before = snap(fresh_bundle.root)
    fresh_bundle.run("generate-certs").assert_one_error("do not belong together")
    assert snap(fresh_bundle.root) == before


def test_missing_ca_key_is_an_error(fresh_bundle, snap):
    fresh_bundle.layout.ca_key.unlink()
    before = snap(fresh_bundle.root)
    fresh_bundle.run("init").assert_one_error("ca.key is missing")
    assert snap(fresh_bundle.root) == before


@pytest.mark.parametrize("command", ["init", "generate-certs", "mint-tokens"])
def test_corrupt_signing_key_is_an_error_and_changes_nothing(fresh_bundle, snap, plant_file, command):
    kid = fresh_bundle.layout.active_kid.read_text().strip()
    plant_file(fresh_bundle.layout.signing_key(kid), b"garbage\n")
    before = snap(fresh_bundle.root)
    fresh_bundle.run(command).assert_one_error(kid, "--force")
    assert snap(fresh_bundle.root) == before


def test_active_kid_without_its_key_is_an_error(fresh_bundle, snap, plant_file):
    plant_file(fresh_bundle.layout.active_kid, b"no-such-kid\n")
    before = snap(fresh_bundle.root)
    fresh_bundle.run("mint-tokens").assert_one_error("no-such-kid")
    assert snap(fresh_bundle.root) == before


@pytest.mark.parametrize("command", ["init", "generate-certs"])
def test_clock_skew_ca_from_the_future_is_an_error(fresh_bundle, snap, plant_file, command):
    """A CA valid only from tomorrow means our clock went backwards: refuse to issue anything."""
    future = CA.create(now=utcnow() + timedelta(days=1))
    layout = fresh_bundle.layout
    plant_file(layout.ca_cert, future.cert_pem())
    plant_file(layout.ca_key, future.key_pem())
    plant_file(layout.trust_bundle, future.cert_pem())
    before = snap(fresh_bundle.root)
    fresh_bundle.run(command).assert_one_error("clock skew", "fix the system clock")
    assert snap(fresh_bundle.root) == before


def test_clock_skew_on_a_directory_holding_only_the_ca(tmp_path, config_file, snap, cli):
    """The brief's setup: only private/ca.pem, private/ca.key and trust/ca.pem exist."""
    future = CA.create(now=utcnow() + timedelta(hours=2))
    out = tmp_path / "out"
    (out / "private").mkdir(parents=True, mode=0o700)
    (out / "trust").mkdir()
    (out / "private" / "ca.pem").write_bytes(future.cert_pem())
    (out / "private" / "ca.key").write_bytes(future.key_pem())
    (out / "trust" / "ca.pem").write_bytes(future.cert_pem())
    before = snap(out)
    cli("generate-certs", "--config", config_file, "--out", out).assert_one_error("clock skew")
    assert snap(out) == before


def test_ca_a_few_minutes_ahead_is_tolerated(fresh_bundle, plant_file):
    """Within the back-dating window a slightly fast CA clock is not skew."""
    ahead = CA.create(now=utcnow() + timedelta(minutes=2))
    layout = fresh_bundle.layout
    plant_file(layout.ca_cert, ahead.cert_pem())
    plant_file(layout.ca_key, ahead.key_pem())
    result = fresh_bundle.run("generate-certs")
    assert result.code == 0, result.err


# --------------------------------------------------------------------------- parse_config directly


def test_parse_config_defaults():
    config = parse_config({"namespaces": [{"name": "default"}, {"name": "other"}]})
    assert [r.name for r in config.roles] == ["system", "worker", "client"]
    assert config.role("system").permissions == ("temporal-system:admin",)
    assert config.role("worker").permissions == ("default:write", "other:write")
    assert config.role("client").permissions == ("default:write", "other:write")
    assert config.role("system").token_lifetime == timedelta(hours=1)
    assert config.pki.key_algorithm == "ecdsa-p256" and config.jwt.algorithm == "ES256"
    assert config.jwks_url.startswith("https://")


def test_parse_config_accepts_worker_plus_write():
    config = parse_config(
        {
            "namespaces": [{"name": "default"}],
            "roles": {
                "system": {"permissions": ["temporal-system:admin"]},
                "worker": {"permissions": ["default:worker", "default:write"]},
                "client": {"permissions": ["default:read"]},
            },
        }
    )
    assert config.role("worker").permissions == ("default:worker", "default:write")


def test_unknown_role_lookup_is_a_bundle_error():
    with pytest.raises(BundleError, match="unknown role 'nope'"):
        parse_config({}).role("nope")


# --------------------------------------------------------------------------- history shards


@pytest.mark.parametrize("command", ["init", "render-config"])
def test_changing_the_history_shard_count_is_refused_and_changes_nothing(fresh_bundle, snap, command):
    record = json.loads(fresh_bundle.layout.cluster_record.read_text())
    assert record["num_history_shards"] == fresh_bundle.config.persistence.num_history_shards
    text = fresh_bundle.config_path.read_text()
    changed = text + "\npersistence: {num_history_shards: 1024}\n" if "persistence:" not in text else None
    assert changed, "the test config must not set persistence already"
    fresh_bundle.config_path.write_text(changed)
    before = snap(fresh_bundle.root)
    fresh_bundle.run(command).assert_one_error("num_history_shards is 1024", "can never change")
    assert snap(fresh_bundle.root) == before


def test_bundles_from_before_the_record_adopt_the_rendered_count(fresh_bundle, snap):
    """No record yet (an older bundle): the rendered server config says what the database got."""
    fresh_bundle.layout.cluster_record.unlink()
    fresh_bundle.config_path.write_text(fresh_bundle.config_path.read_text() + "\npersistence: {num_history_shards: 8}\n")
    before = snap(fresh_bundle.root)
    fresh_bundle.run("init").assert_one_error(f"created with {fresh_bundle.config.persistence.num_history_shards}")
    assert snap(fresh_bundle.root) == before


def test_the_production_default_is_512_shards_in_code_and_example():
    from pathlib import Path

    import yaml

    assert parse_config({"namespaces": [{"name": "default"}]}).persistence.num_history_shards == 512
    example = yaml.safe_load((Path(__file__).parents[2] / "bundle.example.yaml").read_text())
    assert example["persistence"]["num_history_shards"] == 512


def test_a_bundle_made_with_the_default_refuses_a_smaller_count_until_it_is_set_back(fresh_bundle, snap):
    """The default (512) is what the database got; setting the old default (4) is refused, and
    setting the count back makes init run again with nothing rewritten."""
    text = fresh_bundle.config_path.read_text()
    assert fresh_bundle.config.persistence.num_history_shards == 512
    fresh_bundle.config_path.write_text(text + "\npersistence: {num_history_shards: 4}\n")
    before = snap(fresh_bundle.root)
    fresh_bundle.run("init").assert_one_error("num_history_shards is 4", "set it back to 512")
    assert snap(fresh_bundle.root) == before
    fresh_bundle.config_path.write_text(text)
    assert fresh_bundle.run("init").code == 0
    assert snap(fresh_bundle.root) == before


# --------------------------------------------------------------------------- the database's Temporal release


def record(bundle) -> dict:
    return json.loads(bundle.layout.cluster_record.read_text())


def test_init_records_the_server_release_and_moves_it_forward(fresh_bundle, monkeypatch):
    monkeypatch.delenv("TEMPORAL_SERVER_IMAGE", raising=False)
    assert "temporal_version" not in record(fresh_bundle)  # nothing to record without a server image
    out = fresh_bundle.run("init", "--server-image", "mirror.example/temporalio/server:1.31.2")
    assert out.code == 0 and record(fresh_bundle)["temporal_version"] == "1.31.2", out
    monkeypatch.setenv("TEMPORAL_SERVER_IMAGE", "temporalio/server:1.32.2@sha256:" + "0" * 64)  # what compose passes
    out = fresh_bundle.run("init")
    assert out.code == 0 and "Temporal 1.32.2 on this database" in out.out, out
    assert record(fresh_bundle) == {"num_history_shards": fresh_bundle.config.persistence.num_history_shards,
                                    "temporal_version": "1.32.2"}
    assert fresh_bundle.run("init").code == 0 and record(fresh_bundle)["temporal_version"] == "1.32.2"
    # render-config (no server about to start) keeps the recorded release
    assert fresh_bundle.run("render-config").code == 0 and record(fresh_bundle)["temporal_version"] == "1.32.2"


@pytest.mark.parametrize("image, fragments", [
    ("temporalio/server:1.31.2", ["Temporal 1.31.2", "last migrated by Temporal 1.32.2", "an older server is refused"]),
    ("temporalio/server:1.32.1", ["Temporal 1.32.1", "last migrated by Temporal 1.32.2"]),
    ("temporalio/server:1.34.0", ["skips a minor version"]),
    ("temporalio/server:2.0.0", ["changes the major version"]),
    ("temporalio/server:latest", ["TEMPORAL_SERVER_IMAGE", "not a release version"]),
    ("temporalio/server", ["TEMPORAL_SERVER_IMAGE", "has no version tag"]),
])
def test_an_older_or_unknown_server_release_is_refused_and_changes_nothing(fresh_bundle, snap, image, fragments):
    assert fresh_bundle.run("init", "--server-image", "temporalio/server:1.32.2").code == 0
    before = snap(fresh_bundle.root)
    fresh_bundle.run("init", "--server-image", image).assert_one_error(*fragments)
    assert snap(fresh_bundle.root) == before


def test_a_corrupt_release_record_is_refused(fresh_bundle, snap):
    path = fresh_bundle.layout.cluster_record
    path.write_text(json.dumps({"num_history_shards": fresh_bundle.config.persistence.num_history_shards,
                                "temporal_version": "yesterday"}))
    before = snap(fresh_bundle.root)
    fresh_bundle.run("init", "--server-image", "temporalio/server:1.32.2").assert_one_error("corrupt", "yesterday")
    assert snap(fresh_bundle.root) == before
