"""`rotate --kind exchange-key`: the token exchange's signing key in the signing-key rotation's three
phases (publish beside the old, the exchange signs with the new, retire the old), resumable after
a crash at any write, with the JWKS holding every key the exchange may have signed a live token
with at every moment; garbage planted in its files is refused, never overwritten."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

import pytest

from bootstrap.errors import BundleError
from bootstrap.core.pki import utcnow
from bootstrap.ops.plan import load_exchange_key, load_exchange_keys
from bootstrap.ops.rotation import current_kind, margin, read_state, step
from bootstrap.servers.exchange import ReloadingKey
from bootstrap.store import apply, locked
from bootstrap.core.tokens import SigningKey, jwks_document, mint_token, verify_token
from tests.support.bundles import Bundle, make_bundle

NS = "namespaces: [{name: orders}]\njwt: {refresh_interval: 30s}\n"
WI = ("workload_identity:\n  token_lifetime: 2m\n  issuers:\n"
      "    - {name: cluster, issuer: 'https://kubernetes.default.svc', audience: temporal-service}\n")


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "b", NS + WI)


def advance(bundle, now, probe=None, partial=None):
    """One `rotate` run at `now`; `partial=n` lands only its first n writes (a kill -9 after them)."""
    layout = bundle.layout
    with locked(layout):
        result = step(bundle.config, layout, current_kind(layout, "exchange-key"), now, probe=probe)
        apply(layout, result.actions if partial is None else result.actions[:partial])
    return result


def kids(bundle) -> set[str]:
    return {k["kid"] for k in bundle.jwks()["keys"]}


def signing_kid(bundle) -> str:
    return load_exchange_key(bundle.layout).kid


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".bundle.lock"}


def test_three_phases_publish_activate_retire(bundle):
    layout, config = bundle.layout, bundle.config
    bundle_kid, old = layout.active_kid.read_text().strip(), signing_kid(bundle)
    now = utcnow()

    published = advance(bundle, now)
    new = read_state(layout)["new_kid"]
    assert (published.phase, published.due) == ("published", now + config.jwt.refresh_interval + margin(config))
    assert kids(bundle) == {bundle_kid, old, new} and signing_kid(bundle) == old
    assert oct(layout.exchange_key(new).stat().st_mode & 0o777) == "0o600"

    before = files(layout.root)
    early = advance(bundle, published.due - timedelta(seconds=1))
    assert early.phase == "published" and not early.actions and "refetch the JWKS" in early.waiting_for
    refused = advance(bundle, published.due, probe=lambda key: False)  # the server has not fetched it yet
    assert refused.phase == "published" and not refused.actions and "accept the new exchange key" in refused.waiting_for
    assert files(layout.root) == before

    activated = advance(bundle, published.due, probe=lambda key: key.kid == new)
    assert activated.phase == "activated"
    assert activated.due == published.due + config.workload_identity.token_lifetime + margin(config)
    assert signing_kid(bundle) == new and set(load_exchange_keys(layout)) == {old}
    assert kids(bundle) == {bundle_kid, old, new}  # tokens the old key signed are still live
    assert oct(layout.exchange_signing_key.stat().st_mode & 0o777) == "0o600"

    assert not advance(bundle, activated.due - timedelta(seconds=1)).actions
    done = advance(bundle, activated.due)
    assert done.done and f"retired {old}" in done.message
    assert kids(bundle) == {bundle_kid, new} and signing_kid(bundle) == new
    assert load_exchange_keys(layout) == {} and read_state(layout) is None
    assert layout.active_kid.read_text().strip() == bundle_kid  # the bundle's own key is untouched


def _jwks_covers_the_exchange(bundle, old=None):
    """The zero-downtime invariant: whatever the exchange signs with is published, and so is the
    key it signed with before (`old`) until the retirement phase."""
    published = kids(bundle)
    assert signing_kid(bundle) in published and (old is None or old in published)


@pytest.mark.parametrize("phase", ["published", "activated"])
def test_a_kill_after_any_write_is_finished_by_the_next_run(bundle, phase, tmp_path):
    """Every action is one atomic write: a kill -9 lands the first n of them. For each n, on a copy
    of the bundle taken before the phase, the next run finishes the phase, and the JWKS covers
    the exchange's keys at every point in between."""
    old, now = signing_kid(bundle), utcnow()
    result = advance(bundle, now)
    if phase == "activated":
        result = advance(bundle, result.due)
    due = result.due
    writes = len(step(bundle.config, bundle.layout, "exchange-key", due).actions)
    assert writes >= 3
    for crash_after in range(1, writes):
        copy = tmp_path / f"crash-{crash_after}"
        shutil.copytree(bundle.root, copy, symlinks=True)
        crashed = Bundle(copy, bundle.config_path)
        still_live = old if phase == "published" else None  # retirement drops it: its tokens expired
        advance(crashed, due, partial=crash_after)
        _jwks_covers_the_exchange(crashed, still_live)
        finished = advance(crashed, due)
        assert finished.phase == {"published": "activated", "activated": "done"}[phase], (crash_after, finished)
        _jwks_covers_the_exchange(crashed, still_live)
        if phase == "activated":
            assert old not in kids(crashed) and load_exchange_keys(crashed.layout) == {}
            assert read_state(crashed.layout) is None


def test_a_kill_before_the_state_is_recorded_is_adopted(bundle):
    from bootstrap.core.pki import utcnow

    layout = bundle.layout
    advance(bundle, utcnow(), partial=1)  # the new key written, nothing else
    assert read_state(layout) is None
    assert current_kind(layout, None) == "exchange-key"  # `rotate` alone resumes it
    [pending] = load_exchange_keys(layout)
    resumed = advance(bundle, utcnow())
    assert "resuming" in resumed.message and read_state(layout)["new_kid"] == pending


def test_cli_reruns_wait_and_change_nothing(bundle):
    first = bundle.run("rotate", "--kind", "exchange-key")
    assert first.code == 0 and "rotation exchange-key: new exchange key" in first.out, first
    before = files(bundle.layout.root)
    again = bundle.run("rotate")
    assert again.code == 0 and "phase published, waiting for the server to refetch the JWKS" in again.out, again
    assert files(bundle.layout.root) == before
    other = bundle.run("rotate", "--kind", "signing-key")
    assert other.code == 1 and "exchange-key rotation is in phase published" in other.err
    assert bundle.run("init").code == 0  # generate-certs keeps both exchange keys published
    assert read_state(bundle.layout)["new_kid"] in kids(bundle)
    assert "exchange/signing.key: already exists, skipped" in bundle.run("init").out


GARBAGE = {
    "junk-in-exchange-keys": lambda layout: (layout.exchange_keys / "junk.key", b"not a key\n"),
    "misnamed-key": lambda layout: (layout.exchange_keys / "abc.key", SigningKey.generate("ES256").private_pem()),
    "garbage-signing-key": lambda layout: (layout.exchange_signing_key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n"),
}


@pytest.mark.parametrize("plant", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_and_nothing_is_written(bundle, plant, snap):
    path, data = plant(bundle.layout)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(data)
    before = snap(bundle.layout.root)
    result = bundle.run("rotate", "--kind", "exchange-key")
    assert result.code == 1 and result.err.startswith("error: ") and result.err.count("\n") == 1, result
    assert str(path) in result.err
    assert {k: v for k, v in snap(bundle.layout.root).items() if k != ".bundle.lock"} == \
           {k: v for k, v in before.items() if k != ".bundle.lock"}


def test_a_key_swapped_by_hand_mid_rotation_is_refused_at_retirement(bundle):
    from bootstrap.core.pki import utcnow

    layout = bundle.layout
    result = advance(bundle, utcnow())
    result = advance(bundle, result.due)
    layout.exchange_signing_key.write_bytes(SigningKey.generate("ES256").private_pem())
    before = files(layout.root)
    with pytest.raises(BundleError, match="not the rotation's new key"):
        advance(bundle, result.due)
    assert files(layout.root) == before


def test_no_exchange_key_nothing_to_rotate(tmp_path):
    bundle = make_bundle(tmp_path / "plain", NS)
    result = bundle.run("rotate", "--kind", "exchange-key")
    assert result.code == 1 and "no token exchange key to rotate" in result.err


def test_the_exchange_signs_with_the_key_on_disk_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "signing.key"
    first, second = SigningKey.generate("ES256"), SigningKey.generate("ES256")
    path.write_bytes(first.private_pem())
    loaded = ReloadingKey(path)
    assert loaded.current().kid == first.kid
    staged = tmp_path / ".signing.key.tmp"  # the atomic rename rotate does
    staged.write_bytes(second.private_pem())
    os.replace(staged, path)
    assert loaded.current().kid == second.kid
    token = mint_token(loaded.current(), role="workload", permissions=["orders:write"], issuer="i", audience="a",
                       lifetime=timedelta(minutes=1))
    assert verify_token(token.encoded, jwks_document([second]), audience="a")
    path.write_bytes(b"half a key")
    assert loaded.current().kid == second.kid  # unusable file: the last good key signs on
    with pytest.raises(BundleError):
        ReloadingKey(path)  # but a server never starts on one
