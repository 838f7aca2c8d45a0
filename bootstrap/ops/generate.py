"""What generate-certs writes, planned (init plans it too): every CA and leaf certificate, the JWT
signing key and the JWKS, the token exchange's key, the payload KEK and data keys. Everything is
planned before anything is written, so a corrupt file stops the run with the disk untouched."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..core.backend import codec_kek, previous_kek
from ..core.codec_keys import plan_codec_keys
from ..core.config import BundleConfig
from ..core.pki import BACKDATE
from ..core.tokens import SigningKey
from ..errors import BundleError
from ..store import Action, Delete, Layout
from .plan import plan_ca, plan_exchange_key, plan_leaves, plan_signing_key


@dataclass
class GeneratePlan:
    actions: list[Action]
    signing_key: SigningKey  # active once the actions are applied
    shared_domains: tuple[str, ...]  # trust domains still on the server CA (bundles made before domains)

    @property
    def warning(self) -> str | None:
        if not self.shared_domains:
            return None
        return (f"warning: trust domains {', '.join(self.shared_domains)} still share the server CA (a bundle made "
                "before trust domains): any client certificate opens the internode listeners. Separate them "
                "without downtime with `rotate --kind trust-domains --wait`.")


def plan_generate(config: BundleConfig, layout: Layout, force: bool, now: datetime) -> GeneratePlan:
    state = plan_ca(config, layout, force, now)
    for ca in state.cas.values():
        check_clock(ca.cert.not_valid_before_utc, now)
    exchange, exchange_actions = plan_exchange_key(config, layout, force)
    signing = plan_signing_key(config, layout, force, exchange)
    leaves = plan_leaves(config, layout, state.cas, force, now)
    kek, kek_actions = codec_kek(config, layout)
    previous = previous_kek(config, layout)
    data_keys = plan_codec_keys(layout, force, now, [ns.name for ns in config.namespaces], kek, previous)
    if previous is not None:  # its keys are now wrapped by the token: the file KEK goes
        data_keys.append(Delete(layout.codec_kek, "dropped: the data keys are wrapped by the token's KEK now"))
    actions = state.actions + leaves + exchange_actions + signing.actions + kek_actions + data_keys
    return GeneratePlan(actions, signing.active, state.shared)


def check_clock(ca_not_before: datetime, now: datetime) -> None:
    # Everything we issue is back-dated by BACKDATE; a CA that starts later than that means the
    # clock jumped backwards, and certificates issued now would be rejected by every peer.
    if ca_not_before > now + BACKDATE:
        raise BundleError(
            f"clock skew: the CA is valid only from {ca_not_before:%Y-%m-%d %H:%M:%SZ} but the clock says "
            f"{now:%Y-%m-%d %H:%M:%SZ}; fix the system clock"
        )
