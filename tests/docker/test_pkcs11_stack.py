"""keys.backend pkcs11 on the real Docker engine: `make up` with bundle.yaml saying pkcs11 adds
docker-compose.pkcs11.yml, the bootstrap initialises the image's SoftHSM2 token on the bundle-hsm
volume and makes the CA and JWT signing keys in it, and the cluster runs a workflow with role
tokens the token signed. Then, from an attacker's side: no volume, image layer, container log or
backup archive holds a private key whose public half is a CA's or the signing key's, and the
token refuses to export them.

With BUNDLE_TEST_KEYS_BACKEND=pkcs11 the docker tier's shared stack is such a stack, and this
module uses it; otherwise it brings up its own (no monitoring profile)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bootstrap.core.hsm import is_reference, label_for, parse_reference

from tests.support.compose_stack import HSM_PIN_PATH, HSM_TOKEN_LABEL, SOFTHSM_MODULE, TIMINGS, ComposeStack, build_standin_images, run, unique_project
from tests.support.key_search import KeySearch

pytestmark = [pytest.mark.docker, pytest.mark.own_stack]
WORKFLOW_ID = "pkcs11-stack-workflow"
# The only services that may see the token and its PIN (docker-compose.pkcs11.yml).
TOKEN_USERS = {"bootstrap", "token-refresher", "codec-server"}


@pytest.fixture(scope="module")
def hsm_stack(request, tmp_path_factory):
    if os.environ.get("BUNDLE_TEST_KEYS_BACKEND") == "pkcs11":
        yield request.getfixturevalue("running_stack")
        return
    images = build_standin_images()
    s = ComposeStack(unique_project("tbhsm"), tmp_path_factory.mktemp("pkcs11-stack"), images, keys_backend="pkcs11")
    try:
        TIMINGS["pkcs11_make_up_s"] = s.up()
        yield s
    finally:
        log = s.teardown()
        print(f"\npkcs11 stack logs: {log}")


def _passphrase(stack) -> str:
    path = stack.workdir / "backup-passphrase"
    if not path.exists():
        path.write_text("correct horse battery staple, pkcs11 edition\n")
    return str(path)


def test_make_up_added_the_override_and_only_signers_see_the_token(hsm_stack):
    stack = hsm_stack
    assert "BUNDLE_KEYS_BACKEND=pkcs11" in stack.env_file.read_text().splitlines()
    assert (stack.hsm_pin_file.stat().st_mode & 0o777) == 0o444 and (stack.hsm_pin_file.parent.stat().st_mode & 0o777) == 0o700
    seen = {}
    for container in stack.containers():
        service = container["Service"]
        mounts = stack.inspect(service)["Mounts"]
        seen[service] = {
            "token": any(m.get("Name") == stack.volume("bundle-hsm") for m in mounts),
            "pin": any(m["Destination"] == HSM_PIN_PATH for m in mounts),
            "pin_rw": any(m["Destination"] == HSM_PIN_PATH and m["RW"] for m in mounts),
        }
    assert {s for s, m in seen.items() if m["token"]} == TOKEN_USERS, seen
    assert {s for s, m in seen.items() if m["pin"]} == TOKEN_USERS, seen
    assert not any(m["pin_rw"] for m in seen.values()), seen
    assert len(seen) >= 9, seen  # every service of the stack was looked at, not only the three


def _public_keys(stack) -> tuple[dict, dict]:
    """The CA certificates' and the JWKS's public keys (what an attacker can read), and the key
    references the bundle keeps in private/ in place of those keys."""
    listing = stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "bootstrap", "-c",
                            "find /bundle/trust /bundle/private -type f ! -name '.*' | sort").stdout.split()
    files = stack.read_bundle_files(*(p.removeprefix("/bundle/") for p in listing))
    targets = {}
    for name, data in files.items():
        if name.startswith("trust/") and name.endswith(".pem"):
            for cert in x509.load_pem_x509_certificates(data):
                try:
                    is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                except x509.ExtensionNotFound:
                    is_ca = False
                if is_ca:
                    targets[f"CA {cert.subject.rfc4514_string()}"] = cert.public_key()
    import jwt

    jwks = json.loads(stack.read_bundle_file("jwks/jwks.json"))
    for jwk in jwks["keys"]:
        key = jwt.PyJWK.from_dict(jwk).key
        targets[f"JWT signing key {jwk.get('kid')}"] = key if hasattr(key, "public_bytes") else key.public_key()
    references = {name: parse_reference(data, name) for name, data in files.items() if is_reference(data)}
    return targets, references


def test_root_keys_are_token_references_and_match_the_published_public_keys(hsm_stack):
    targets, references = _public_keys(hsm_stack)
    labels = {label_for(k) for k in targets.values()}
    assert any(n.startswith("CA ") for n in targets) and any(n.startswith("JWT ") for n in targets), targets
    assert references, "no key reference in private/: the root keys are files"
    # Every key the bundle uses is in the token, and every published CA / JWKS key is one of them.
    assert set(references.values()) <= labels, (references, labels)
    assert labels <= set(references.values()), "a CA or JWKS key without a token reference"


def test_a_workflow_runs_with_role_tokens_signed_in_the_token(hsm_stack):
    started = time.monotonic()
    result = hsm_stack.run_client("run", WORKFLOW_ID)
    TIMINGS["pkcs11_workflow_s"] = time.monotonic() - started
    assert result["ok"], result
    token = hsm_stack.read_bundle_file("tokens/client.jwt").decode().strip()
    import jwt

    kid = jwt.get_unverified_header(token)["kid"]
    targets, references = _public_keys(hsm_stack)
    signer = next(k for n, k in targets.items() if n == f"JWT signing key {kid}")
    assert label_for(signer) in references.values()
    jwt.decode(token, signer, algorithms=["ES256", "RS256"], options={"verify_aud": False})


REFUSE_EXPORT = r"""
import json, sys, pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
out = []
with token.open(user_pin=open(sys.argv[3]).read().strip()) as session:
    wrapper = session.generate_key(KeyType.AES, 256, store=False, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: False})
    for key in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
        row = {"label": key.label, "type": key.key_type.name}
        for attr in ("EXTRACTABLE", "SENSITIVE", "NEVER_EXTRACTABLE", "ALWAYS_SENSITIVE"):
            row[attr] = bool(key[getattr(Attribute, attr)])
        secret = ["VALUE"] if key.key_type == KeyType.EC else ["PRIVATE_EXPONENT", "PRIME_1", "PRIME_2"]
        row["reads"] = {}
        for attr in secret:
            try:
                value = key[getattr(Attribute, attr)]
                row["reads"][attr] = "READ %d bytes" % len(value)
            except pkcs11.PKCS11Error as exc:
                row["reads"][attr] = type(exc).__name__
        try:
            wrapper.wrap_key(key)
            row["wrap"] = "WRAPPED"
        except pkcs11.PKCS11Error as exc:
            row["wrap"] = type(exc).__name__
        out.append(row)
print(json.dumps(out))
"""


def test_the_token_refuses_to_export_the_root_keys(hsm_stack):
    """Inside the bootstrap container, logged in with the PIN: C_GetAttributeValue of the private
    value fails (CKR_ATTRIBUTE_SENSITIVE) and C_WrapKey fails (CKR_KEY_UNEXTRACTABLE)."""
    # As the token files' owner: a root process would leave root-owned lock files behind.
    result = hsm_stack.compose("run", "--rm", "--no-deps", "-T", "--user", "10001:10001", "--entrypoint", "python3",
                               "bootstrap", "-c", REFUSE_EXPORT, SOFTHSM_MODULE, HSM_TOKEN_LABEL, HSM_PIN_PATH)
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    _, references = _public_keys(hsm_stack)
    assert set(references.values()) <= {r["label"] for r in rows}, (references, rows)
    for row in rows:
        assert not row["EXTRACTABLE"] and row["SENSITIVE"], row
        assert row["NEVER_EXTRACTABLE"] and row["ALWAYS_SENSITIVE"], row
        assert all(v == "AttributeSensitive" for v in row["reads"].values()), row
        assert row["wrap"] == "KeyUnextractable", row


# GNU tar exits 1 when a file changes or vanishes while it is read: PostgreSQL keeps writing its
# volume while the stack runs. Every file is still in the archive; anything else is a real failure.
_LIVE_FILE_WARNINGS = ("file changed as we read it", "File removed before we read it", "File shrank by")


def _volume_tar(stack, volume: str) -> bytes:
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", "0:0", "-v", f"{volume}:/v:ro", "--entrypoint", "tar",
         stack.images["BUNDLE_IMAGE"], "-C", "/v", "-cf", "-", "."],
        capture_output=True, timeout=600)
    warnings = result.stderr.decode(errors="replace").splitlines()
    only_live_writes = bool(warnings) and all(any(w in line for w in _LIVE_FILE_WARNINGS) for line in warnings)
    assert result.returncode == 0 or (result.returncode == 1 and only_live_writes), (volume, result.returncode, warnings)
    return result.stdout


def test_no_volume_image_log_or_backup_holds_a_root_private_key(hsm_stack):
    stack = hsm_stack
    targets, _ = _public_keys(stack)
    search = KeySearch(targets)
    started = time.monotonic()

    archive = stack.workdir / "backups" / "pkcs11.tbak"
    env_passphrase = _passphrase(stack)
    backup = stack.make("backup", f"BACKUP={archive}", f"BACKUP_PASSPHRASE_FILE={env_passphrase}", timeout=900)
    assert archive.is_file(), backup.stdout
    from bootstrap.ops.backup import open_archive

    opened = open_archive(archive.read_bytes(), open(env_passphrase, "rb").read().strip())
    search.scan("backup archive (sealed)", archive.read_bytes())
    for entry in opened.entries.values():
        search.scan(f"backup:{entry.name}", entry.data)
    assert any(is_reference(e.data) for e in opened.entries.values()), "the backup holds no key reference"

    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"]).stdout.split()
    assert stack.volume("bundle-hsm") in volumes and stack.volume("postgres-data") in volumes, volumes
    for volume in volumes:
        search.scan_tar(f"volume {volume}", _volume_tar(stack, volume))

    search.scan("container logs", stack.logs().encode())

    with subprocess.Popen(["docker", "save", stack.images["BUNDLE_IMAGE"]], stdout=subprocess.PIPE) as save:
        search.scan_tar(f"image {stack.images['BUNDLE_IMAGE']}", save.stdout)
    assert save.returncode == 0
    TIMINGS["pkcs11_key_search_s"] = time.monotonic() - started

    assert search.findings == [], search.findings
    # The search reads real keys: the leaf keys (files by design) in the volumes and the backup.
    assert search.other_private_keys > 0 and search.scanned_bytes > 100_000_000, (search.other_private_keys, search.scanned_bytes)
    print(f"\nkey search: {search.scanned_blobs} files, {search.scanned_bytes // 1_000_000} MB, "
          f"{search.other_private_keys} leaf private keys seen, 0 of {len(targets)} root keys")


def test_every_listener_admits_exactly_its_trust_domain_with_the_keys_in_the_token(hsm_stack, tmp_path_factory):
    """The trust-domain attack matrix (test_edge_attacks.py), every listener of this stack x every
    issued, foreign and expired certificate, against the stack whose CAs sign inside the token."""
    from bootstrap.core.config import load_config
    from bootstrap.core.security_model import LISTENERS

    from tests.support.edge_attacks import all_credentials, run_matrix

    stack = hsm_stack
    config = load_config(stack.config)
    workdir = tmp_path_factory.mktemp("pkcs11-attacker")
    workdir.chmod(0o755)
    listeners = tuple(listener for listener in LISTENERS if not listener.profile)  # this stack runs no profile
    tried, wrong = run_matrix(stack, config, workdir, listeners, all_credentials(stack, config, workdir))
    assert tried and not wrong, "\n".join(wrong)
