"""The key stores a rotation rolls over: the JWT signing keys and the token exchange's key.

One driver (rotation.py) runs publish -> activate -> retire over either store. A store knows what
it has on disk, how to make a new key, and what each phase writes; the driver knows the phases,
the waits and private/rotation.json.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from ..core import backend
from ..core.config import BundleConfig
from ..errors import BundleError
from ..store import CERT_MODE, KEY_MODE, Action, Delete, Layout, Write
from ..core.tokens import SigningKey
from .plan import (
    active_signing_key,
    load_exchange_key,
    load_exchange_keys,
    load_published_keys,
    plan_jwks,
    plan_tokens,
)


class KeyStore(Protocol):
    """What a key rotation needs from the keys it rotates. `keys` holds every key on disk, the
    active one included."""

    kind: str
    noun: str  # as in "new {noun} X published beside Y"
    signs_with: str  # the activated phase's message, with {kid}
    publishes_only: str  # the done phase's "JWKS publishes ... only", with {kid}
    old_tokens_expire: str  # what the activated phase waits for
    not_accepted: str  # what a probe that refuses the new key waits for
    active: SigningKey
    keys: dict[str, SigningKey]

    def unrecorded(self) -> list[SigningKey]:
        """Keys published beside the active one that no rotation recorded (a crash before it did)."""

    def new_key(self) -> tuple[SigningKey, list[Action]]:
        """A new key and the writes that keep it beside the active one."""

    def publish(self, new: SigningKey) -> Action:
        """The JWKS with the new key beside the active one."""

    def activate(self, state: dict, now: datetime) -> tuple[SigningKey, list[Action]]:
        """The new key and the writes that make it the one that signs."""

    def token_lifetime(self) -> timedelta:
        """The longest lifetime of a token the old key signed: how long it stays published."""

    def retire(self, state: dict) -> tuple[list[str], list[Action]]:
        """The kids dropped and the writes that drop them from disk and the JWKS."""


class SigningKeys:
    """private/signing-keys/, the active kid in private/active-kid; tokens/ follow the active key."""

    kind = "signing-key"
    noun = "key"
    signs_with = "tokens now signed by {kid}"
    publishes_only = "JWKS publishes {kid} only"
    old_tokens_expire = "tokens signed by the old key to expire"
    not_accepted = ("the server to accept the new key (it refetches the JWKS every jwt.refresh_interval; if it "
                    "cannot reach the JWKS URL, check the jwks service and that the server trusts its CA)")

    def __init__(self, config: BundleConfig, layout: Layout):
        self.config, self.layout = config, layout
        self.keys = load_published_keys(layout)
        self.active = active_signing_key(layout, self.keys)

    def unrecorded(self) -> list[SigningKey]:
        return [k for kid, k in self.keys.items() if kid != self.active.kid]

    def new_key(self) -> tuple[SigningKey, list[Action]]:
        config = self.config
        new = SigningKey.generate(config.jwt.algorithm, lambda alg: backend.new_root_key(config, alg))
        self.keys = {**self.keys, new.kid: new}
        return new, [Write(self.layout.signing_key(new.kid), new.private_pem(), KEY_MODE, "new signing key")]

    def publish(self, new: SigningKey) -> Action:
        return plan_jwks(self.layout, list(self.keys.values()), force=False)

    def activate(self, state: dict, now: datetime) -> tuple[SigningKey, list[Action]]:
        layout = self.layout
        new = self.keys.get(state["new_kid"])
        if new is None:
            raise BundleError(f"{layout.rotation_state}: new key {state['new_kid']} is missing from {layout.signing_keys}")
        tokens, _ = plan_tokens(self.config, layout, new, force=False, now=now)
        return new, tokens + [Write(layout.active_kid, (new.kid + "\n").encode(), CERT_MODE, "activated the new signing key")]

    def token_lifetime(self) -> timedelta:
        return max(role.token_lifetime for role in self.config.roles)

    def retire(self, state: dict) -> tuple[list[str], list[Action]]:
        retired = [kid for kid in self.keys if kid != self.active.kid]
        actions: list[Action] = [Delete(self.layout.signing_key(kid), "retired signing key") for kid in retired]
        actions.append(plan_jwks(self.layout, [self.active], force=False))
        return retired, actions


class ExchangeKeys:
    """exchange/signing.key is the key the exchange signs with (and all it mounts); the key a
    rotation publishes beside it, the next one and then the retiring one, waits in
    private/exchange-keys/."""

    kind = "exchange-key"
    noun = "exchange key"
    signs_with = "the exchange now signs with {kid}"
    publishes_only = "JWKS publishes exchange key {kid} only"
    old_tokens_expire = "exchanged tokens signed by the old key to expire"
    not_accepted = "the server to accept the new exchange key (it refetches the JWKS every jwt.refresh_interval)"

    def __init__(self, config: BundleConfig, layout: Layout):
        self.config, self.layout = config, layout
        active = load_exchange_key(layout)
        if active is None:
            raise BundleError(f"{layout.exchange_signing_key} not found: no token exchange key to rotate "
                              "(enable workload_identity and run init first)")
        self.active, self.others = active, load_exchange_keys(layout)
        self.keys = {**self.others, active.kid: active}

    def unrecorded(self) -> list[SigningKey]:
        pending = [k for kid, k in self.others.items() if kid != self.active.kid]
        if len(pending) > 1:
            raise BundleError(f"{self.layout.exchange_keys} holds {len(pending)} keys but no rotation is recorded; inspect it")
        return pending

    def new_key(self) -> tuple[SigningKey, list[Action]]:
        new = SigningKey.generate(self.config.jwt.algorithm)
        return new, [Write(self.layout.exchange_key(new.kid), new.private_pem(), KEY_MODE, "next token exchange key")]

    def publish(self, new: SigningKey) -> Action:
        return self._jwks(self.active, [new])

    def activate(self, state: dict, now: datetime) -> tuple[SigningKey, list[Action]]:
        layout, active = self.layout, self.active
        new, old = self.keys.get(state["new_kid"]), self.keys.get(state["old_kid"])
        if new is None or old is None:
            missing = state["new_kid"] if new is None else state["old_kid"]
            raise BundleError(f"{layout.rotation_state}: exchange key {missing} is neither in {layout.exchange_signing_key} "
                              f"nor in {layout.exchange_keys}")
        actions: list[Action] = []
        # Old key kept published first, then the swap, then the next key's copy dropped: a crash
        # anywhere leaves both keys published and this phase to run again.
        if not layout.exchange_key(old.kid).exists():
            actions.append(Write(layout.exchange_key(old.kid), old.private_pem(), KEY_MODE, "retiring token exchange key"))
        if active.kid != new.kid:
            actions.append(Write(layout.exchange_signing_key, new.private_pem(), KEY_MODE, "the token exchange signs with the new key"))
        if layout.exchange_key(new.kid).exists():
            actions.append(Delete(layout.exchange_key(new.kid), "promoted to exchange/signing.key"))
        return new, actions + [self._jwks(new, [old])]

    def token_lifetime(self) -> timedelta:
        return self.config.workload_identity.token_lifetime

    def retire(self, state: dict) -> tuple[list[str], list[Action]]:
        active = self.active
        if active.kid != state["new_kid"]:
            raise BundleError(f"{self.layout.exchange_signing_key} holds kid {active.kid}, not the rotation's new key "
                              f"{state['new_kid']}; inspect it")
        retired = [kid for kid in self.others if kid != active.kid]
        actions: list[Action] = [Delete(self.layout.exchange_key(kid), "retired token exchange key") for kid in self.others]
        return retired, actions + [self._jwks(active, [])]

    def _jwks(self, signing: SigningKey, beside: list[SigningKey]) -> Action:
        """The JWKS: the bundle's signing keys as on disk, the exchange's key and `beside`."""
        return plan_jwks(self.layout, list(load_published_keys(self.layout).values()), False, signing, beside)


KEY_STORES = {store.kind: store for store in (SigningKeys, ExchangeKeys)}
