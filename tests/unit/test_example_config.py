"""bundle.example.yaml is the configuration reference: with every commented setting switched on it
loads, and it names every key the config parser accepts."""

from __future__ import annotations

import yaml

from bootstrap.core.config import load_config, parse_config
from tests.support.config_keys import EXAMPLE, accepted_keys, example_variants, generic, keys_present, keys_read


def test_the_example_as_shipped_loads():
    assert load_config(EXAMPLE).persistence.num_history_shards == 512


def test_every_setting_switched_on_loads_in_each_variant():
    variants = example_variants()
    assert len(variants) >= 2, "the example shows the external IdP as an alternative to Dex"
    for variant in variants:
        parse_config(variant)


def test_switching_settings_on_turns_on_the_optional_sections():
    shipped = set(yaml.safe_load(EXAMPLE.read_text()))
    switched_on = set(example_variants()[0])
    assert {"codec", "oidc", "workload_identity", "kubernetes"} <= switched_on - shipped


def test_every_key_the_parser_accepts_is_in_the_example():
    shown = {generic(path) for variant in example_variants() for path in keys_present(variant)}
    missing = sorted(accepted_keys() - shown)
    assert not missing, f"bundle.example.yaml does not show: {missing}"


def test_a_key_missing_from_the_example_is_found():
    """The check above can fail: drop one setting and the parser still asks for it."""
    variant = example_variants()[0]
    del variant["network"]["grafana_port"]
    assert "network.grafana_port" in keys_read(variant) - keys_present(variant)

