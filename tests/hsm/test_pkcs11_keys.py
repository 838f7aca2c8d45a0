"""keys.backend: pkcs11 on a real SoftHSM2 token: every CA key and JWT signing key is
made inside the token as non-extractable, certificates and tokens are signed there, the bundle
directory, the backup archive and the rendered files hold no private byte of them, and the token
refuses to export them. Bad module, token or PIN: one clear error, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootstrap.core import pki
from bootstrap.ops.backup import open_archive
from bootstrap.core.config import load_config
from bootstrap.core.hsm import is_reference, label_for, parse_reference
from bootstrap.ops.plan import DOMAINS, leaf_specs
from bootstrap.store import Layout
from bootstrap.core.tokens import verify_token
from tests.support.codec import single_kek_bundle
from tests.support.hsm import PIN

PEM_PRIVATE = b"PRIVATE KEY-----"

# Asks the token directly, as an attacker holding the PIN would: read the private value, wrap
# the key out under a key of our own. Prints what each attempt got.
PROBE = """
import json, sys, pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
module, label, pin, kek_labels, *keys = sys.argv[1:]
out = {}
with pkcs11.lib(module).get_token(token_label=label).open(user_pin=pin, rw=True) as s:
    wrapper = s.generate_key(KeyType.AES, 256, store=False, template={Attribute.WRAP: True})
    def attempts(obj, secret_attr):
        r = {a: bool(obj[getattr(Attribute, a.upper())]) for a in ("sensitive", "extractable", "never_extractable", "local")}
        try:
            obj[secret_attr]; r["read"] = "EXPORTED"
        except pkcs11.PKCS11Error as e:
            r["read"] = type(e).__name__
        try:
            wrapper.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP_PAD); r["wrap"] = "EXPORTED"
        except pkcs11.PKCS11Error as e:
            r["wrap"] = type(e).__name__
        return r
    for key in keys:
        [priv] = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: key})
        out[key] = attempts(priv, Attribute.VALUE if priv.key_type == KeyType.EC else Attribute.PRIVATE_EXPONENT)
    for kek_label in filter(None, kek_labels.split(",")):
        [kek] = s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: kek_label})
        out[kek_label] = attempts(kek, Attribute.VALUE)
print(json.dumps(out))
"""


def root_key_files(out: Path) -> list[Path]:
    private = out / "private"
    return sorted([*private.glob("ca*.key"), *(private / "jwt").glob("*.key")])


def files_with_private_pem(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and PEM_PRIVATE in p.read_bytes()}


def leaf_key_paths(config_path: Path, out: Path) -> set[str]:
    layout = Layout(out)
    return {layout.relative(layout.leaf(s.directory, s.name)[1]) for s in leaf_specs(load_config(config_path))}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def assert_consistent(config_path: Path, out: Path) -> None:
    """Every leaf chains to its domain's CA, each CA's key is the token key its reference names,
    and every role token verifies against the JWKS built from the token's public keys."""
    config, layout = load_config(config_path), Layout(out)
    for domain in DOMAINS:
        cert_path, key_path = layout.domain_ca(domain)
        ca = pki.load_cert(cert_path.read_bytes(), str(cert_path))
        assert is_reference(key_path.read_bytes()), f"{key_path} must be a token reference"
        assert parse_reference(key_path.read_bytes(), "ca") == label_for(ca.public_key())
        assert pki.signed_by(ca, ca), f"{domain} CA is not self-signed by its token key"
    cas = {d: pki.load_cert(layout.domain_ca(d)[0].read_bytes(), d) for d in DOMAINS}
    for spec in leaf_specs(config):
        cert_path, key_path = layout.leaf(spec.directory, spec.name)
        cert = pki.load_cert(cert_path.read_bytes(), str(cert_path))
        assert pki.signed_by(cert, cas[spec.domain]), f"{cert_path} not signed by the {spec.domain} CA"
        assert pki.keys_match(cert, pki.load_private_key(key_path.read_bytes(), str(key_path)))  # leaves stay files
    jwks = json.loads(layout.jwks.read_text())
    assert {k["kid"] for k in jwks["keys"]} == {p.stem for p in layout.signing_keys.glob("*.key")}
    for path in layout.signing_keys.glob("*.key"):
        assert is_reference(path.read_bytes())
    for role in config.roles:
        claims = verify_token(layout.token(role.name).read_text().strip(), jwks, audience=config.jwt.audience, leeway=3600)
        assert claims["sub"] == f"temporal-bundle:{role.name}"


KEK_LABELS = "temporal-bundle-codec-kek:orders,temporal-bundle-codec-kek:payments"  # one per namespace


def token_labels(token, prefix: str) -> list[str]:
    """The labels of the token's secret keys that start with `prefix`."""
    code = """
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
module, label, pin, prefix = sys.argv[1:]
with pkcs11.lib(module).get_token(token_label=label).open(user_pin=pin) as s:
    print("\\n".join(sorted(o.label for o in s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}) if o.label.startswith(prefix))))
"""
    result = token.python(code, token.module, token.label, PIN, prefix)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def probe(token, out: Path) -> dict:
    labels = [parse_reference(p.read_bytes(), str(p)) for p in root_key_files(out)]
    result = token.python(PROBE, token.module, token.label, PIN, KEK_LABELS, *labels)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- init


def test_init_keeps_every_root_key_in_the_token(token, hsm_bundle):
    config, out = hsm_bundle
    assert len(root_key_files(out)) == len(DOMAINS) + 1
    assert_consistent(config, out)
    # No PEM private key anywhere but the leaves' own key files; no KEK file either.
    assert files_with_private_pem(out) == leaf_key_paths(config, out)
    assert not (out / "codec-kek").exists()
    # check-expiry reads certificates and tokens only: the same in both modes (this config's 1s
    # tokens may already be expired; every certificate is fine).
    expiry = token.cli("check-expiry", out).stdout
    certs = [line for line in expiry.splitlines() if " cert " in line]
    assert len(certs) > 10 and all(line.rstrip().endswith("ok") for line in certs) and " 0 unreadable" in expiry, expiry
    # Re-running creates no key and changes no certificate (1s tokens are re-minted: they are due).
    before = {k: v for k, v in snapshot(out).items() if not k.endswith(".jwt")}
    again = token.cli("init", "--config", config, "--out", out)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in snapshot(out).items() if not k.endswith(".jwt")} == before


def test_the_token_refuses_to_export_the_keys(token, hsm_bundle):
    _, out = hsm_bundle
    found = probe(token, out)
    assert len(found) == len(DOMAINS) + 3  # four CAs, the signing key, a KEK per namespace
    for label, got in found.items():
        assert got["sensitive"] and not got["extractable"] and got["never_extractable"] and got["local"], (label, got)
        assert got["read"] == "AttributeSensitive", (label, got)
        assert got["wrap"] != "EXPORTED" and got["wrap"].startswith("KeyUnextractable"), (label, got)


def test_backup_and_rendered_files_hold_no_root_key(token, hsm_bundle, tmp_path):
    config, out = hsm_bundle
    dump = tmp_path / "temporal.dump"
    dump.write_bytes(b"PGDMP" + os.urandom(64))
    archive = tmp_path / "backup.tbak"
    passphrase = "correct horse battery staple"
    token.env["BACKUP_PASSPHRASE"] = passphrase
    created = token.cli("backup", "create", "--config", config, "--out", out, "--archive", archive,
                        "--dump", f"temporal={dump}", "--dump", f"temporal_visibility={dump}")
    assert created.returncode == 0, created.stderr
    assert "CA/signing keys are in the PKCS#11 token and NOT in this archive" in created.stdout
    opened = open_archive(archive.read_bytes(), passphrase.encode())
    assert opened.entries, "the archive must hold the bundle's state"
    for name, entry in opened.entries.items():
        assert PEM_PRIVATE not in entry.data, f"{name} in the backup holds a PEM private key"
    refs = [n for n, e in opened.entries.items() if is_reference(e.data)]
    assert len(refs) == len(DOMAINS) + 1
    assert not any(n.startswith("codec-kek/") for n in opened.entries)
    for rendered in (out / "config").rglob("*"):
        if rendered.is_file():
            assert PEM_PRIVATE not in rendered.read_bytes(), rendered


def test_payload_keys_are_wrapped_by_the_token_kek(token, hsm_bundle):
    """A new bundle under pkcs11: one token key per namespace (<kek_label>:<ns>), no bundle-wide one."""
    _, out = hsm_bundle
    doc = json.loads((out / "codec-keys/keys.json").read_text())
    assert doc == {"format": "per-namespace-v1", "namespaces": ["orders", "payments"], "legacy": False}
    for ns in ("orders", "payments"):
        ring = json.loads((out / f"codec-keys/{ns}.json").read_text())
        assert ring["kek"].startswith(f"pkcs11:temporal-bundle-codec-kek:{ns}:"), ring["kek"]
    assert token_labels(token, "temporal-bundle-codec-kek") == KEK_LABELS.split(",")
    # The codec (as the codec server runs it) unwraps them with the token and round-trips a payload.
    code = """
import sys
from bootstrap.core import backend
from bootstrap.core.config import load_config
from bootstrap.store import Layout
from bootstrap.core.codec import KeyringFile, encrypt, decrypt
from temporalio.api.common.v1 import Payload
config, layout = load_config(sys.argv[1]), Layout(__import__("pathlib").Path(sys.argv[2]))
keys = KeyringFile(layout.codec_keys, backend.codec_kek_for_serving(config, layout)).current()
p = Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')
assert decrypt(encrypt(p, keys, "orders"), keys) == p
print(sorted(keys.rings))
"""
    result = token.python(code, out.parent / "bundle.yaml", out)
    assert result.returncode == 0 and "['orders', 'payments']" in result.stdout, result.stderr


# --------------------------------------------------------------------------- rotation


def test_signing_key_rotation_in_the_token(token, hsm_bundle):
    config, out = hsm_bundle
    old = {p.stem for p in (out / "private/jwt").glob("*.key")}
    result = token.cli("rotate", "--config", config, "--out", out, "--kind", "signing-key", "--wait", "-q")
    assert result.returncode == 0, result.stderr
    new = {p.stem for p in (out / "private/jwt").glob("*.key")}
    assert len(new) == 1 and new != old
    assert (out / "private/jwt/active").read_text().strip() in new
    assert_consistent(config, out)
    assert files_with_private_pem(out) == leaf_key_paths(config, out)
    assert all(got["read"] == "AttributeSensitive" for got in probe(token, out).values())


def test_ca_rotation_in_the_token(token, hsm_bundle):
    config, out = hsm_bundle
    before = {d: (out / "private" / ("ca.pem" if d == "server" else f"ca-{d}.pem")).read_bytes() for d in DOMAINS}
    result = token.cli("rotate", "--config", config, "--out", out, "--kind", "ca", "--wait", "-q")
    assert result.returncode == 0, result.stderr
    for domain in DOMAINS:
        path = out / "private" / ("ca.pem" if domain == "server" else f"ca-{domain}.pem")
        assert path.read_bytes() != before[domain], f"{domain} CA not rotated"
    assert not list((out / "private").glob("ca*-next.*"))
    assert_consistent(config, out)
    assert files_with_private_pem(out) == leaf_key_paths(config, out)


def test_codec_key_rotation_with_the_token_kek(token, hsm_bundle):
    config, out = hsm_bundle
    before = {ns: json.loads((out / f"codec-keys/{ns}.json").read_text()) for ns in ("orders", "payments")}
    result = token.cli("rotate", "--config", config, "--out", out, "--kind", "codec-key", "--namespace", "orders")
    assert result.returncode == 0, result.stderr
    orders, payments = (json.loads((out / f"codec-keys/{ns}.json").read_text()) for ns in ("orders", "payments"))
    assert set(before["orders"]["keys"]) < set(orders["keys"]) and len(orders["keys"]) == 2
    assert orders["kek"] == before["orders"]["kek"], "still wrapped by orders' own token key"
    assert payments == before["payments"], "payments' ring untouched"


# --------------------------------------------------------------------------- bad input


def one_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("case,expected", [
    ("wrong PIN", "wrong PIN"),
    ("missing module", "no such file"),
    ("not a PKCS#11 library", "not a loadable PKCS#11 library"),
    ("no such token", "no PKCS#11 token labelled 'nope'"),
    ("unreadable PIN file", "pin_file"),
])
def test_bad_token_settings_are_one_error_and_nothing_is_written(token, tmp_path, case, expected):
    overrides = {
        "wrong PIN": {},
        "missing module": {"module": "/usr/lib/no-such-pkcs11.so"},
        "not a PKCS#11 library": {"module": "/etc/hostname"},
        "no such token": {"token_label": "nope"},
        "unreadable PIN file": {"pin_file": str(tmp_path / "missing-pin")},
    }[case]
    if case == "wrong PIN":
        token.pin_file.write_text("000000\n")
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(token.config(**overrides))
    assert expected in one_error(token.cli("init", "--config", config, "--out", out))
    assert snapshot(out) == {}, "nothing may be written"


def test_wrong_pin_on_an_existing_bundle_changes_nothing(token, hsm_bundle):
    config, out = hsm_bundle
    before = snapshot(out)
    token.pin_file.write_text("000000\n")
    for argv in (("init",), ("rotate", "--kind", "signing-key"), ("mint-tokens",)):
        assert "wrong PIN" in one_error(token.cli(*argv, "--config", config, "--out", out))
    assert snapshot(out) == before


def test_a_token_without_the_expected_keys_is_refused(token, hsm_bundle):
    config, out = hsm_bundle
    token.init_token("empty")
    config.write_text(token.config(token_label="empty"))
    before = snapshot(out)
    for argv in (("init",), ("rotate", "--kind", "certs", "--all"), ("mint-tokens",)):
        message = one_error(token.cli(*argv, "--config", config, "--out", out))
        assert "holds no key labelled" in message, message
    assert snapshot(out) == before


def test_a_token_reference_under_the_file_backend_is_refused(token, hsm_bundle):
    config, out = hsm_bundle
    config.write_text(token.config().split("keys:")[0])
    before = snapshot(out)
    message = one_error(token.cli("init", "--config", config, "--out", out))
    assert "PKCS#11 key reference, but keys.backend is not pkcs11" in message
    assert snapshot(out) == before


def test_kubernetes_export_holds_no_root_key(token, tmp_path):
    """export-helm in pkcs11 mode: no Secret holds a PEM private key of a CA or the signing key;
    the token refresher's Secret carries the signing key's reference (its pod must reach the token)."""
    import base64

    import yaml

    config, out, dest = tmp_path / "bundle.yaml", tmp_path / "out", tmp_path / "helm"
    config.write_text(token.config().replace("persistence: {driver: sqlite, sqlite_path: /tmp/unused-hsm.db}",
                                             "persistence: {driver: postgres}"))
    assert token.cli("init", "--config", config, "--out", out, "-q").returncode == 0
    result = token.cli("export-helm", "--config", config, "--out", out, "--dest", dest, "-q")
    assert result.returncode == 0, result.stderr
    leaf_keys = {(out / rel).read_bytes() for rel in leaf_key_paths(config, out)}
    references = 0
    for path in (dest / "secrets").glob("*.yaml"):
        for key, value in (yaml.safe_load(path.read_text()).get("data") or {}).items():
            data = base64.b64decode(value)
            if PEM_PRIVATE in data:
                assert data in leaf_keys, f"{path.name}: {key} holds a private key that is not a leaf's"
            references += is_reference(data)
    assert references == 1, "the refresher's Secret names the signing key in the token"


def test_a_file_bundle_moved_to_pkcs11(token, tmp_path):
    """Switching an existing file bundle to pkcs11: its PEM CA and signing keys still load; init
    re-wraps the data keys under the token's KEK and drops codec-kek/; `rotate --kind ca` and
    `--kind signing-key` then replace the PEM keys with token keys."""
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(token.config().split("keys:")[0])
    assert token.cli("init", "--config", config, "--out", out, "-q").returncode == 0
    single_kek_bundle(out)  # as init made it before per-namespace custody
    before = json.loads((out / "codec-keys/keys.json").read_text())
    assert before["kek"].startswith("file:") and (out / "codec-kek/kek.key").exists()

    config.write_text(token.config())
    moved = token.cli("init", "--config", config, "--out", out)
    assert moved.returncode == 0, moved.stderr
    assert "re-wrapped under the new backend's key-encryption key" in moved.stdout
    after = json.loads((out / "codec-keys/keys.json").read_text())
    assert after["kek"].startswith("pkcs11:") and not (out / "codec-kek/kek.key").exists()
    for ns in ("orders", "payments"):
        assert set(after["namespaces"][ns]["keys"]) == set(before["namespaces"][ns]["keys"])
    for kind in ("signing-key", "ca"):
        result = token.cli("rotate", "--config", config, "--out", out, "--kind", kind, "--wait", "-q")
        assert result.returncode == 0, result.stderr
    assert all(is_reference(p.read_bytes()) for p in root_key_files(out))
    assert files_with_private_pem(out) == leaf_key_paths(config, out)
    assert_consistent(config, out)


# --------------------------------------------------------------------------- per-namespace custody


def test_per_namespace_keks_in_the_token_are_non_extractable_and_open_only_their_namespace(token, hsm_bundle):
    """migrate-codec-keys under pkcs11: one AES key per namespace in the token, labelled
    <kek_label>:<ns>, each sensitive and never extractable; each ring unwraps with its own only."""
    config, out = hsm_bundle
    assert token.single_kek_bundle(config, out).startswith("pkcs11:temporal-bundle-codec-kek:")
    before = json.loads((out / "codec-keys/keys.json").read_text())
    result = token.cli("migrate-codec-keys", "--config", config, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "orders.json: migrated from keys.json" in result.stdout, result.stdout
    assert ("destroyed token key 'temporal-bundle-codec-kek': the bundle-wide KEK wraps nothing any more"
            in result.stdout), result.stdout
    assert token_labels(token, "temporal-bundle-codec-kek") == KEK_LABELS.split(","), "the old KEK is gone"
    assert not (out / "codec-kek").exists(), "no KEK file under pkcs11"
    for ns in ("orders", "payments"):
        ring = json.loads((out / f"codec-keys/{ns}.json").read_text())
        assert ring["kek"].startswith(f"pkcs11:temporal-bundle-codec-kek:{ns}:"), ring["kek"]
        assert set(ring["keys"]) == set(before["namespaces"][ns]["keys"])
        found = token.python(PROBE, token.module, token.label, PIN, f"temporal-bundle-codec-kek:{ns}")
        assert found.returncode == 0, found.stderr
        got = json.loads(found.stdout)[f"temporal-bundle-codec-kek:{ns}"]
        assert got["sensitive"] and not got["extractable"] and got["never_extractable"] and got["local"], got
        assert got["read"] == "AttributeSensitive" and got["wrap"].startswith("KeyUnextractable"), got
    code = """
import sys
from pathlib import Path
from bootstrap.core import backend
from bootstrap.core.config import load_config
from bootstrap.core.codec import KeyringFile, encrypt, decrypt
from bootstrap.core.namespace_keys import parse_ring
from bootstrap.store import Layout
from temporalio.api.common.v1 import Payload
config, layout = load_config(sys.argv[1]), Layout(Path(sys.argv[2]))
keks = backend.codec_kek_for_serving(config, layout)
keys = KeyringFile(layout.codec_keys, keks).current()
p = Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')
assert decrypt(encrypt(p, keys, "payments"), keys) == p
try:
    parse_ring((layout.codec_keys.parent / "payments.json").read_bytes(), "payments", keks.kek("orders"), "payments.json")
except Exception as exc:
    print("refused:", exc)
print(sorted(keys.rings))
"""
    result = token.python(code, config, out)
    assert result.returncode == 0, result.stderr
    assert "['orders', 'payments']" in result.stdout and "refused: payments.json: wrapped by key-encryption key" in result.stdout
    rotated = token.cli("rotate", "--config", config, "--out", out, "--kind", "codec-key", "--namespace", "orders")
    assert rotated.returncode == 0, rotated.stderr
    again = token.cli("migrate-codec-keys", "--config", config, "--out", out)
    assert again.returncode == 0 and again.stdout.count("already migrated, skipped") == 3, again.stdout
    assert "token key 'temporal-bundle-codec-kek': already destroyed, skipped" in again.stdout, again.stdout


def test_a_migration_killed_before_it_destroyed_the_old_token_kek_destroys_it_on_the_next_run(token, hsm_bundle):
    """The migration's file writes all done (manifest included), then a kill before the old
    token key is destroyed: the next run destroys it. A ring still wrapped by it keeps it."""
    config, out = hsm_bundle
    token.single_kek_bundle(config, out)
    code = """
import sys
from pathlib import Path
from bootstrap.core import backend
from bootstrap.core.config import load_config
from bootstrap.core.pki import utcnow
from bootstrap.store import Layout, apply
config, layout = load_config(sys.argv[1]), Layout(Path(sys.argv[2]))
custody, kek_actions = backend.codec_kek(config, layout)
apply(layout, kek_actions + custody.migrate(layout, utcnow(), [ns.name for ns in config.namespaces]))
"""
    killed = token.python(code, config, out)
    assert killed.returncode == 0, killed.stderr
    assert "temporal-bundle-codec-kek" in token_labels(token, "temporal-bundle-codec-kek")
    # A ring put back under the old KEK (a restore gone wrong): the old KEK is kept, and it says why.
    orders = (out / "codec-keys/orders.json").read_bytes()
    ring = json.loads(orders)
    (out / "codec-keys/orders.json").write_text(json.dumps({**ring, "kek": "pkcs11:temporal-bundle-codec-kek:00"}))
    kept = token.cli("migrate-codec-keys", "--config", config, "--out", out)
    assert kept.returncode == 1 and "temporal-bundle-codec-kek" in token_labels(token, "temporal-bundle-codec-kek")
    (out / "codec-keys/orders.json").write_bytes(orders)
    done = token.cli("migrate-codec-keys", "--config", config, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "destroyed token key 'temporal-bundle-codec-kek'" in done.stdout, done.stdout
    assert token_labels(token, "temporal-bundle-codec-kek") == KEK_LABELS.split(",")


def test_a_per_namespace_file_bundle_moved_to_pkcs11(token, tmp_path):
    """Per-namespace file KEKs, then keys.backend pkcs11: init re-wraps each ring under its own
    token key and drops that namespace's codec-kek/<ns>.key; the data keys stay the same."""
    config, out = tmp_path / "bundle.yaml", tmp_path / "out"
    config.write_text(token.config().split("keys:")[0])
    assert token.cli("init", "--config", config, "--out", out, "-q").returncode == 0
    assert token.cli("migrate-codec-keys", "--config", config, "--out", out, "-q").returncode == 0
    before = {ns: json.loads((out / f"codec-keys/{ns}.json").read_text()) for ns in ("orders", "payments")}
    assert all(doc["kek"].startswith("file:") for doc in before.values())
    config.write_text(token.config())
    moved = token.cli("init", "--config", config, "--out", out)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.count("re-wrapped under the new backend's key-encryption key") == 2, moved.stdout
    assert not list((out / "codec-kek").glob("*.key"))
    for ns, doc in before.items():
        after = json.loads((out / f"codec-keys/{ns}.json").read_text())
        assert after["kek"].startswith(f"pkcs11:temporal-bundle-codec-kek:{ns}:") and set(after["keys"]) == set(doc["keys"])
