"""The payload codec, its keyring file, how the bootstrap plans and rotates it, the `codec:` config
section, and the codec server's authorization rules (no Temporal server needed here)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from bootstrap.cli import main
from bootstrap.core.codec import (
    ENCODING,
    KEY_ID_HEADER,
    NAMESPACE_HEADER,
    CodecError,
    EncryptionCodec,
    KeyringFile,
    data_converter,
    decrypt,
    encrypt,
    payload_namespace,
)
from bootstrap.core.codec_keys import Keyring, KeySet, plan_codec_keys
from bootstrap.core.kek import FileKek
from bootstrap.servers.auth import URLJWKS, grants, role_for
from bootstrap.core.config import parse_config
from bootstrap.ops.plan import codec_sans
from bootstrap.errors import BundleError
from bootstrap.store import Layout, Skip, Write
from tests.support.bundles import make_bundle
from tests.support.codec import bundle_keys, legacy_encrypt

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)
CONFIG = textwrap.dedent("""\
    namespaces: [{name: default}]
    persistence: {driver: sqlite, sqlite_path: /tmp/unused-codec.db}
    """)


def plain(value: str = "top secret") -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------- the cipher


def test_round_trip_restores_the_whole_payload():
    keyring = Keyring.generate(NOW)
    original = Payload(metadata={"encoding": b"json/plain", "messageType": b"x.y"}, data=b'{"card": "4111"}')
    sealed = encrypt(original, keyring, "default")
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_HEADER] == keyring.active.encode()
    assert sealed.metadata[NAMESPACE_HEADER] == b"default"
    assert set(sealed.metadata) == {"encoding", KEY_ID_HEADER, NAMESPACE_HEADER}, "the original metadata must be inside the ciphertext"
    assert b"4111" not in sealed.data and b"x.y" not in sealed.data
    assert decrypt(sealed, keyring) == original


def test_every_encryption_uses_a_fresh_nonce():
    keyring = Keyring.generate(NOW)
    first, second = encrypt(plain(), keyring, "default"), encrypt(plain(), keyring, "default")
    assert first.data[:12] != second.data[:12]
    assert first.data != second.data


def test_payloads_that_are_not_encrypted_pass_through_decode():
    keyring = Keyring.generate(NOW)
    for payload in (plain(), Payload(metadata={"encoding": b"binary/null"}), Payload()):
        assert decrypt(payload, keyring) is payload


def test_unknown_key_id_is_a_clear_error():
    sealed = encrypt(plain(), Keyring.generate(NOW), "default")
    other = Keyring.generate(NOW)
    with pytest.raises(CodecError, match=r"unknown key id .*known: " + other.active):
        decrypt(sealed, other)


def test_the_key_id_is_bound_as_associated_data():
    """Relabelling a payload with another known key id fails authentication, even when that
    label names the very key that encrypted it under a different id."""
    keyring = Keyring.generate(NOW)
    twin = Keyring(keyring.active, {**keyring.keys, "alias": keyring.keys[keyring.active]})
    sealed = encrypt(plain(), twin, "default")
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID_HEADER: b"alias"}, data=sealed.data)
    with pytest.raises(CodecError, match="failed authentication"):
        decrypt(relabelled, twin)


@pytest.mark.parametrize("relabel", [b"payments", b"orders\x00", b"", None])
def test_the_namespace_is_bound_as_associated_data(relabel):
    """Moving a payload to another namespace, or dropping its namespace to pass it off as a
    payload written before the binding, fails authentication."""
    keyring = Keyring.generate(NOW)
    sealed = encrypt(plain(), keyring, "orders")
    assert payload_namespace(sealed) == "orders"
    metadata = {k: v for k, v in sealed.metadata.items() if k != NAMESPACE_HEADER}
    if relabel is not None:
        metadata[NAMESPACE_HEADER] = relabel
    with pytest.raises(CodecError, match="failed authentication"):
        decrypt(Payload(metadata=metadata, data=sealed.data), keyring)


def test_payloads_written_before_the_binding_still_decrypt():
    keyring = Keyring.generate(NOW)
    old = legacy_encrypt(plain("old"), keyring)
    assert payload_namespace(old) is None
    assert decrypt(old, keyring) == plain("old")
    with_namespace = Payload(metadata={**old.metadata, NAMESPACE_HEADER: b"orders"}, data=old.data)
    with pytest.raises(CodecError, match="failed authentication"):
        decrypt(with_namespace, keyring)


def test_codec_binds_the_sdk_contexts_namespace():
    from temporalio.converter import ActivitySerializationContext, WorkflowSerializationContext

    keyring = Keyring.generate(NOW)
    codec = EncryptionCodec(keyring, "fallback")
    workflow = codec.with_context(WorkflowSerializationContext(namespace="orders", workflow_id="w"))
    activity = codec.with_context(ActivitySerializationContext(
        namespace="payments", activity_id="a", activity_type="t", activity_task_queue="q", workflow_id="w",
        workflow_type="W", is_local=False))
    [a] = run(workflow.encode([plain()]))
    [b] = run(activity.encode([plain()]))
    [c] = run(codec.encode([plain()]))
    assert [payload_namespace(p) for p in (a, b, c)] == ["orders", "payments", "fallback"]
    assert run(codec.decode([a, b, c])) == [plain()] * 3


def test_codec_without_a_namespace_refuses_to_write_unbound_payloads():
    codec = EncryptionCodec(Keyring.generate(NOW))
    with pytest.raises(CodecError, match="no namespace"):
        run(codec.encode([plain()]))
    with pytest.raises(CodecError):
        encrypt(plain(), Keyring.generate(NOW), "")


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-key-id"])
def test_tampered_or_truncated_payloads_are_refused(damage):
    keyring = Keyring.generate(NOW)
    sealed = encrypt(plain(), keyring, "default")
    if damage == "flip":
        data = bytearray(sealed.data)
        data[-1] ^= 1
        broken = Payload(metadata=sealed.metadata, data=bytes(data))
    elif damage == "truncate":
        broken = Payload(metadata=sealed.metadata, data=sealed.data[:20])
    else:
        broken = Payload(metadata={"encoding": ENCODING}, data=sealed.data)
    with pytest.raises(CodecError):
        decrypt(broken, keyring)


def test_rotation_keeps_old_payloads_readable_and_encrypts_with_the_new_key():
    old = Keyring.generate(NOW)
    written_before = encrypt(plain("before"), old, "default")
    new = old.rotated(NOW)
    assert new.active != old.active and set(old.keys) < set(new.keys)
    assert decrypt(written_before, new) == plain("before")
    assert encrypt(plain(), new, "default").metadata[KEY_ID_HEADER] == new.active.encode()


def test_codec_and_data_converter_round_trip_values():
    keyring = Keyring.generate(NOW)
    converter = data_converter(keyring, namespace="default")
    assert isinstance(converter.payload_codec, EncryptionCodec)
    payloads = run(converter.encode(["hello", {"n": 1}]))
    assert all(p.metadata["encoding"] == ENCODING for p in payloads)
    assert all(b"hello" not in p.data for p in payloads)
    assert run(converter.decode(payloads, [str, dict])) == ["hello", {"n": 1}]


def test_failure_messages_and_stack_traces_are_encrypted_too():
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    converter = data_converter(Keyring.generate(NOW), namespace="default")
    failure = Failure()
    run(converter.encode_failure(ApplicationError("card 4111 declined", "card 4111"), failure))
    assert "4111" not in failure.message and "4111" not in failure.stack_trace
    assert b"4111" not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    restored = run(converter.decode_failure(failure))
    assert str(restored) == "card 4111 declined"
    plain_failures = data_converter(Keyring.generate(NOW), encrypt_failures=False, namespace="default")
    failure = Failure()
    run(plain_failures.encode_failure(ApplicationError("visible"), failure))
    assert failure.message == "visible"


def test_codec_follows_the_keyring_file(tmp_path):
    path = tmp_path / "keys.json"
    path.write_bytes(Keyring.generate(NOW).to_bytes())
    codec = EncryptionCodec(path, "default")
    [before] = run(codec.encode([plain("before")]))
    rotated = Keyring.parse(path.read_bytes()).rotated(NOW)
    tmp = tmp_path / "keys.tmp"
    tmp.write_bytes(rotated.to_bytes())
    os.replace(tmp, path)  # what the store does
    [after] = run(codec.encode([plain("after")]))
    assert after.metadata[KEY_ID_HEADER] == rotated.active.encode() != before.metadata[KEY_ID_HEADER]
    assert run(codec.decode([before, after])) == [plain("before"), plain("after")]


def test_keyring_file_keeps_the_last_good_keys_if_the_file_breaks(tmp_path):
    path = tmp_path / "keys.json"
    path.write_bytes(Keyring.generate(NOW).to_bytes())
    source = KeyringFile(path)
    good = source.current()
    path.write_text("{broken")
    assert source.current() == good
    assert "not JSON" in source.error


def test_codec_needs_a_readable_keyring_at_construction(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        EncryptionCodec(tmp_path / "missing.json")


# --------------------------------------------------------------------------- the keyring file


@pytest.mark.parametrize(
    "doc,problem",
    [
        ("[]", "expected exactly"),
        ('{"active": "a", "keys": {}}', "non-empty"),
        ('{"active": "a", "keys": {"a": "c2hvcnQ="}}', "not 32 bytes"),
        ('{"active": "b", "keys": {"a": "%s"}}' % base64.b64encode(b"k" * 32).decode(), "not among the keys"),
        ('{"active": "a b", "keys": {"a b": "%s"}}' % base64.b64encode(b"k" * 32).decode(), "invalid key id"),
        ('{"active": "a", "keys": {"a": "%s"}, "extra": 1}' % base64.b64encode(b"k" * 32).decode(), "expected exactly"),
        ("not json", "not JSON"),
    ],
)
def test_keyring_parse_is_strict(doc, problem):
    with pytest.raises(BundleError, match=problem):
        Keyring.parse(doc.encode())


def test_keyring_bytes_round_trip():
    keyring = Keyring.generate(NOW).rotated(NOW)
    assert Keyring.parse(keyring.to_bytes()) == keyring
    assert keyring.active.startswith("20260102-")


KEK = FileKek(bytes(range(32)))


def test_plan_creates_keeps_and_refuses(tmp_path):
    layout = Layout(tmp_path)
    [created] = plan_codec_keys(layout, False, NOW, ["default"], KEK)
    assert isinstance(created, Write) and created.mode == 0o600 and created.reason == "created"
    layout.codec_keys.parent.mkdir()
    layout.codec_keys.write_bytes(created.data)
    assert plan_codec_keys(layout, False, NOW, ["default"], KEK) == [Skip(layout.codec_keys)]
    layout.codec_keys.write_text("garbage")
    with pytest.raises(BundleError, match="without --force"):
        plan_codec_keys(layout, False, NOW, ["default"], KEK)
    [replaced] = plan_codec_keys(layout, True, NOW, ["default"], KEK)
    assert "replaced (--force)" in replaced.reason


def test_force_rotates_a_good_keyring_and_never_drops_a_key(tmp_path):
    layout = Layout(tmp_path)
    [created] = plan_codec_keys(layout, False, NOW, ["default"], KEK)
    layout.codec_keys.parent.mkdir()
    layout.codec_keys.write_bytes(created.data)
    [forced] = plan_codec_keys(layout, True, NOW, ["default"], KEK)
    before = KeySet.parse(created.data, KEK).rings["default"]
    after = KeySet.parse(forced.data, KEK).rings["default"]
    assert after.active != before.active
    assert after.keys[before.active] == before.keys[before.active]


@pytest.fixture
def bundle(tmp_path):
    made = make_bundle(tmp_path, CONFIG)
    return made.config_path, made.root


def keyset(out: Path) -> KeySet:
    return bundle_keys(out)


def test_init_writes_the_keyring_0600_and_the_codec_server_cert(bundle):
    _, out = bundle
    keys = out / "codec-keys" / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "codec-keys" / "default.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "codec-kek" / "default.key").stat().st_mode) == 0o600
    assert set(keyset(out).rings) == {"default"}
    assert (out / "codec" / "server.pem").is_file() and (out / "codec" / "server.key").is_file()
    # The data keys live apart from every TLS key: an application mounting codec-keys/ gets no key
    # to impersonate the codec server, and the codec server's directory holds no data keys. The
    # KEK has a directory of its own: the wrapped keys alone open nothing.
    assert sorted(p.name for p in keys.parent.iterdir()) == ["default.json", "keys.json"]
    assert sorted(p.name for p in (out / "codec-kek").iterdir()) == ["default.key"]
    assert not list((out / "codec").glob("*.json"))


def test_rerun_keeps_the_keyring_bytes(bundle):
    config, out = bundle
    keys = out / "codec-keys" / "keys.json"
    before = keys.read_bytes()
    assert main(["generate-certs", "--config", str(config), "--out", str(out), "-q"]) == 0
    assert keys.read_bytes() == before


def test_corrupt_keyring_stops_init_before_anything_is_written(bundle, capsys):
    config, out = bundle
    keys = out / "codec-keys" / "keys.json"
    keys.write_text("{}")
    (out / "tokens" / "client.jwt").unlink()
    assert main(["init", "--config", str(config), "--out", str(out)]) == 1
    assert "without --force" in capsys.readouterr().err
    assert not (out / "tokens" / "client.jwt").exists(), "nothing may be written when planning fails"


def test_rotate_codec_key(bundle, capsys):
    config, out = bundle
    keys = out / "codec-keys" / "keys.json"
    before = keyset(out).rings["default"]
    assert main(["rotate", "--config", str(config), "--out", str(out), "--kind", "codec-key"]) == 0
    after = keyset(out).rings["default"]
    assert after.active not in before.keys
    assert {k: after.keys[k] for k in before.keys} == before.keys
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert f"default: {after.active}" in capsys.readouterr().out
    assert not (out / "private" / "rotation.json").exists(), "a one-step rotation leaves no state"


def test_rotate_codec_key_runs_beside_a_signing_key_rotation(bundle):
    config, out = bundle
    base = ["rotate", "--config", str(config), "--out", str(out)]
    assert main([*base, "--kind", "signing-key"]) == 0  # published; waits for the server
    assert main([*base, "--kind", "codec-key"]) == 0
    assert json.loads((out / "private" / "rotation.json").read_text())["kind"] == "signing-key"


def test_rotate_codec_key_without_a_keyring_says_what_to_do(tmp_path, capsys):
    config = tmp_path / "bundle.yaml"
    config.write_text(CONFIG)
    assert main(["rotate", "--config", str(config), "--out", str(tmp_path / "none"), "--kind", "codec-key"]) == 1
    assert "run generate-certs" in capsys.readouterr().err


# --------------------------------------------------------------------------- config


def test_codec_config_defaults():
    codec = parse_config({}).codec
    assert (codec.host, codec.port, codec.decrypt_role) == ("codec-server", 8888, "admin")
    # The UI is served over HTTPS on localhost (its cert's name; Secure session cookies).
    assert codec.ui_origins == ("https://localhost:8080",)
    assert parse_config({"network": {"ui_port": 9090}}).codec.ui_origins[0] == "https://localhost:9090"
    assert codec_sans(parse_config({"codec": {"sans": ["codec.example.com"]}})) == (
        "codec-server", "codec.example.com", "localhost", "127.0.0.1")


@pytest.mark.parametrize(
    "codec,problem",
    [
        ({"colour": "red"}, "unknown key"),
        ({"decrypt_role": "worker"}, "decrypt_role must be one of"),
        ({"port": 70000}, "port number"),
        ({"ui_origins": "https://ui.example.com"}, "must be a list"),
        ({"ui_origins": ["http://ui.example.com"]}, "only a loopback UI may use http"),
        ({"ui_origins": ["https://ui.example.com/"]}, "is not an origin"),
        ({"ui_origins": ["https://ui.example.com/path"]}, "is not an origin"),
        ({"ui_origins": ["*"]}, "is not an origin"),
        ({"ui_origins": ["https://*.example.com"]}, "wildcards"),
        ({"ui_origins": ["https://UI.example.com"]}, "lower case"),
        ({"ui_origins": ["https://ui.example.com:443"]}, "default port"),
        ({"sans": ["bad name!"]}, "not a valid DNS name"),
    ],
)
def test_codec_config_is_strict(codec, problem):
    with pytest.raises(BundleError, match=problem):
        parse_config({"codec": codec})


# --------------------------------------------------------------------------- the role lattice


@pytest.mark.parametrize(
    "permissions,namespace,required,granted",
    [
        (["default:admin"], "default", "admin", True),
        (["default:admin"], "other", "admin", False),
        (["default:write"], "default", "admin", False),
        (["default:write"], "default", "write", True),
        (["default:read"], "default", "write", False),
        (["default:read", "default:worker"], "default", "write", False),  # 2|1 = 3 < 4
        (["default:read", "default:write"], "default", "write", True),
        (["temporal-system:admin"], "anything", "admin", True),
        (["temporal-system:read"], "default", "admin", False),
        (["temporal-system:read", "default:admin"], "default", "admin", True),
        (["system:admin"], "default", "admin", False),  # not the cluster scope
        (["default:ADMIN"], "default", "admin", True),  # Temporal lower-cases the role
        (["Default:admin"], "default", "admin", False),  # but not the namespace
        (["default:admin:extra", 5, None], "default", "read", False),
        ([], "default", "read", False),
    ],
)
def test_role_lattice_matches_temporals_default_authorizer(permissions, namespace, required, granted):
    # The claim the server reads (permissionsClaimName: groups), where Dex puts a user's groups.
    assert grants({"groups": permissions}, namespace, required) is granted
    # `permissions` alone (the claim role tokens also carry) grants nothing: the server ignores it.
    assert grants({"permissions": permissions}, namespace, required) is False


def test_missing_or_malformed_permissions_claim_grants_nothing():
    assert role_for({}, "default") == 0
    assert role_for({"groups": "default:admin"}, "default") == 0


# --------------------------------------------------------------------------- the token check's memory


class _CountingJWKS:
    def __init__(self, doc):
        self.doc, self.calls = doc, 0

    async def key_set(self, kid=None):
        self.calls += 1
        return self.doc


def _token(key, lifetime_seconds=3600, now=None):
    from datetime import timedelta

    from bootstrap.core.tokens import mint_token

    return mint_token(key, role="t", permissions=["default:admin"], issuer="temporal-bundle", audience="temporal",
                      lifetime=timedelta(seconds=lifetime_seconds), now=now).encoded


def test_a_verified_token_is_remembered_briefly_and_never_past_its_exp():
    import time

    from bootstrap.servers.auth import Authenticator
    from bootstrap.servers.events import Refusal
    from bootstrap.core.tokens import SigningKey, jwks_document

    key = SigningKey.generate()
    jwks = _CountingJWKS(jwks_document([key]))
    auth = Authenticator(jwks, "temporal", ("temporal-bundle",), remember=0.3)
    token = _token(key)
    assert run(auth.claims(f"Bearer {token}"))["sub"] == "temporal-bundle:t"
    assert run(auth.claims(f"Bearer {token}"))["sub"] == "temporal-bundle:t"
    assert jwks.calls == 1, "the second request should not verify again"
    time.sleep(0.35)
    run(auth.claims(f"Bearer {token}"))
    assert jwks.calls == 2, "after `remember` seconds the token is verified again"

    auth = Authenticator(jwks, "temporal", ("temporal-bundle",), remember=60)
    short = _token(key, lifetime_seconds=1)
    run(auth.claims(f"Bearer {short}"))
    exp = auth._verified[short][0]["exp"]
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Refusal) as refused:
        run(auth.claims(f"Bearer {short}"))
    assert refused.value.status == 401 and "expired" in refused.value.detail


def test_forged_tokens_are_never_remembered():
    from bootstrap.servers.auth import Authenticator
    from bootstrap.servers.events import Refusal
    from bootstrap.core.tokens import SigningKey, jwks_document

    key, impostor = SigningKey.generate(), SigningKey.generate()
    auth = Authenticator(_CountingJWKS(jwks_document([key])), "temporal", ("temporal-bundle",))
    import jwt as pyjwt

    forged = pyjwt.encode({"sub": "x", "aud": "temporal", "iss": "temporal-bundle", "iat": 1, "nbf": 1,
                           "exp": 4102444800}, impostor.private_key, algorithm="ES256", headers={"kid": key.kid})
    for _ in range(2):
        with pytest.raises(Refusal):
            run(auth.claims(f"Bearer {forged}"))
    assert auth._verified == {}


# --------------------------------------------------------------------------- JWKS URL fetching


class _ScriptedJWKS(URLJWKS):
    """A JWKS URL whose fetches are scripted: each returns the next document, raises, or waits."""

    def __init__(self, script, **options):
        super().__init__("https://jwks.invalid/jwks.json", None, **options)
        self.script, self.fetches = script, 0

    async def _fetch(self):
        self.fetches += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, asyncio.Event):
            await step.wait()
            return {"keys": [{"kid": "late"}]}
        return step


def test_jwks_url_fetches_once_for_concurrent_unknown_kids_and_backs_off():
    from bootstrap.servers.auth import JWKSUnavailable
    from bootstrap.servers.fetch import FetchError

    async def scenario():
        source = _ScriptedJWKS([FetchError("down"), {"keys": [{"kid": "a"}]}], unknown_every=0)
        with pytest.raises(JWKSUnavailable):
            await source.key_set("a")
        with pytest.raises(JWKSUnavailable):  # within the 1 s backoff: no second fetch
            await source.key_set("a")
        assert source.fetches == 1
        source._attempted -= 1.1
        results = await asyncio.gather(*(source.key_set("a") for _ in range(5)))
        assert source.fetches == 2 and all(r == {"keys": [{"kid": "a"}]} for r in results)

    run(scenario())


def test_known_kids_do_not_wait_for_a_slow_fetch():
    async def scenario():
        release = asyncio.Event()
        source = _ScriptedJWKS([{"keys": [{"kid": "a"}]}, release], unknown_every=0)
        assert await source.key_set("a") == {"keys": [{"kid": "a"}]}
        stranger = asyncio.ensure_future(source.key_set("late"))
        await asyncio.sleep(0.01)
        assert source.fetches == 2 and not stranger.done(), "the unknown kid's fetch is in flight"
        known = await asyncio.wait_for(source.key_set("a"), 0.1)  # answered from the cached set
        assert known == {"keys": [{"kid": "a"}]}
        release.set()
        assert await stranger == {"keys": [{"kid": "late"}]}

    run(scenario())
