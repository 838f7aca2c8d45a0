"""Decide what a bootstrap step must write, from the config and what is already on disk.

Planning reads and validates everything first and returns a list of actions; only then does the
store carry them out. So a corrupt key or a bad config fails before a single byte is written.
What happens to a file already on disk: see force.py.

  pki.py      one CA per trust domain, trust bundles, leaf certificates (DOMAINS, leaf_specs, the
              servers' SANs)
  keys.py     JWT signing keys, the JWKS, the token exchange's key
  cluster.py  private/cluster.json (history shard count, last Temporal release)
  tokens.py   role tokens and the registrar's token
"""

from .cluster import plan_cluster_record, recorded_shards
from .force import FORCE_HINT
from .keys import (
    active_signing_key,
    load_exchange_key,
    load_exchange_keys,
    load_published_keys,
    load_signing_keys,
    plan_exchange_key,
    plan_jwks,
    plan_signing_key,
)
from .pki import DOMAINS, codec_sans, leaf_specs, load_ca, load_cas, new_ca, plan_ca, plan_leaves
from .tokens import plan_registrar_token, plan_tokens

__all__ = [
    "DOMAINS",
    "FORCE_HINT",
    "active_signing_key",
    "codec_sans",
    "leaf_specs",
    "load_ca",
    "load_cas",
    "load_exchange_key",
    "load_exchange_keys",
    "load_published_keys",
    "load_signing_keys",
    "new_ca",
    "plan_ca",
    "plan_cluster_record",
    "plan_exchange_key",
    "plan_jwks",
    "plan_leaves",
    "plan_registrar_token",
    "plan_signing_key",
    "plan_tokens",
    "recorded_shards",
]
