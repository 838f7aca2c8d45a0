"""Plan private/cluster.json: facts about the cluster's database fixed at creation or that only
move one way (the history shard count, the Temporal release that last migrated it)."""

from __future__ import annotations

import json

import yaml

from ...core.config import BundleConfig
from ...errors import BundleError
from ...store import CERT_MODE, Action, Layout, Skip, Write, read_optional
from ..upgrade import Version, check_step, image_version, parse_version


def _cluster_record(layout: Layout) -> dict | None:
    raw = read_optional(layout.cluster_record)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    shards = record.get("num_history_shards") if isinstance(record, dict) else None
    version = record.get("temporal_version", "") if isinstance(record, dict) else None
    if not isinstance(shards, int) or isinstance(shards, bool) or not isinstance(version, str):
        raise BundleError(f"{layout.cluster_record} is corrupt; inspect it (it records the history shard count "
                          "and the Temporal release that last migrated the database)")
    return record


def recorded_shards(layout: Layout) -> int | None:
    """The history shard count the cluster's database was created with, if the bundle knows it:
    from its record, else (bundles made before the record) from the server config it rendered."""
    record = _cluster_record(layout)
    if record is not None:
        return record["num_history_shards"]
    rendered = read_optional(layout.config_dir / "temporal.yaml")
    if rendered is None:
        return None
    try:
        return int(yaml.safe_load(rendered)["persistence"]["numHistoryShards"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise BundleError(f"{layout.config_dir / 'temporal.yaml'}: cannot read persistence.numHistoryShards") from None


def recorded_version(layout: Layout) -> Version | None:
    """The Temporal release that last migrated the cluster's database (None: not recorded yet)."""
    record = _cluster_record(layout)
    if not record or not record.get("temporal_version"):
        return None
    try:
        return parse_version(record["temporal_version"])
    except BundleError:
        raise BundleError(f"{layout.cluster_record} is corrupt: temporal_version "
                          f"{record['temporal_version']!r} is not a release") from None


def _check_server_release(layout: Layout, server_image: str) -> Version:
    """The release TEMPORAL_SERVER_IMAGE names, refused when it is older than the database (a
    schema a newer server migrated is never safe for an older one) or skips a minor."""
    version = image_version(server_image, "TEMPORAL_SERVER_IMAGE")
    last = recorded_version(layout)
    if last is not None and version < last:
        raise BundleError(
            f"TEMPORAL_SERVER_IMAGE is {server_image} (Temporal {version}) but this cluster's database was last "
            f"migrated by Temporal {last}: an older server is refused (set the {last} image variables again, "
            "or restore a backup taken before the upgrade)"
        )
    if last is not None:
        try:
            check_step(last, version)
        except BundleError as exc:
            raise BundleError(f"TEMPORAL_SERVER_IMAGE is {server_image}: {exc}") from None
    return version


def plan_cluster_record(config: BundleConfig, layout: Layout, server_image: str | None = None) -> Action:
    """private/cluster.json, facts about the database that only move one way:
    - the history shard count it was created with: Temporal maps every workflow to a shard by that
      count, so changing it later orphans existing histories (refused);
    - the Temporal release of the server about to run on it (server_image, when the caller starts
      one): never older than the recorded one, which already migrated the schema (refused)."""
    wanted, recorded = config.persistence.num_history_shards, recorded_shards(layout)
    if recorded is not None and recorded != wanted:
        raise BundleError(
            f"{config.source}: persistence.num_history_shards is {wanted} but this cluster was created with "
            f"{recorded}; the count can never change once the database has data (set it back to {recorded})"
        )
    record = _cluster_record(layout)
    updated = dict(record or {"num_history_shards": wanted})
    if server_image:
        updated["temporal_version"] = str(_check_server_release(layout, server_image))
    if updated == record:
        return Skip(layout.cluster_record)
    data = (json.dumps(updated, indent=2) + "\n").encode()
    reason = "created" if record is None else f"updated: Temporal {updated['temporal_version']} on this database"
    return Write(layout.cluster_record, data, CERT_MODE, reason)
