"""export-helm fails closed: values whose server config, as chart 1.6.0 composes it, would serve
plaintext or admit any client are refused with one error line, and nothing is written."""

from __future__ import annotations

import shutil

import pytest
import yaml
from hypothesis import given, settings

from bootstrap.core.tls_guard import tls_problems
from bootstrap.ops.render import default_templates_dir
from tests.support import chart
from tests.support.exports import export, read_tree
from tests.support.tls_shapes import weakened, weakenings
from tests.support.bundles import snapshot


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guard") / "templates"
    shutil.copytree(default_templates_dir(), directory)
    return directory


def _plant_values(templates, values: dict) -> None:
    """A values.yaml.j2 that renders exactly these values."""
    text = yaml.safe_dump(values, sort_keys=False)
    (templates / "helm" / "values.yaml.j2").write_text("{% raw %}" + text + "{% endraw %}")


def _assert_refused(bundle, templates, tmp_path_factory, exported) -> None:
    fresh = tmp_path_factory.mktemp("refused") / "out"
    export(bundle, fresh, "--templates", templates).assert_one_error("values.yaml", "fail open")
    assert not fresh.exists()
    before = snapshot(exported)
    export(bundle, exported, "--templates", templates).assert_one_error("fail open")
    assert snapshot(exported) == before


def test_the_planting_itself_exports(bundle, templates, values, exported, tmp_path):
    # The planted template is not refused for being planted: unweakened, it exports the same values.
    _plant_values(templates, values)
    dest = tmp_path / "out"
    assert export(bundle, dest, "--templates", templates).code == 0
    assert yaml.safe_load((dest / "values.yaml").read_text()) == values
    assert read_tree(dest).keys() == read_tree(exported).keys()


@settings(max_examples=15)
@given(choices=weakenings())
def test_every_weakened_server_tls_is_refused_and_nothing_written(bundle, templates, exported, tmp_path_factory, choices):
    values = yaml.safe_load((exported / "values.yaml").read_text())
    values["server"]["config"]["tls"] = weakened(values["server"]["config"]["tls"], choices)
    if values["server"]["config"]["tls"] is None:
        del values["server"]["config"]["tls"]
    assert tls_problems(chart.server_config(values)), choices  # the chart would render it failing open
    _plant_values(templates, values)
    _assert_refused(bundle, templates, tmp_path_factory, exported)


def test_the_main_branch_values_shape_is_refused(bundle, templates, exported, tmp_path_factory):
    """The export this replaces: server.tls.* (main-branch chart only) for the certificates and
    server.config.tls for the CAs. Chart 1.6.0 ignores server.tls and renders TLS off."""
    values = yaml.safe_load((exported / "values.yaml").read_text())
    tls = values["server"]["config"]["tls"]
    values["server"]["tls"] = {group: {"enabled": True, "secretName": f"temporal-bundle-{group}-tls",
                                       "mountPath": f"/etc/temporal/tls/{group}", "requireClientAuth": True}
                               for group in ("internode", "frontend")}
    for group in ("internode", "frontend"):
        tls[group]["server"] = {"clientCaFiles": tls[group]["server"]["clientCaFiles"]}
    assert "certFile" not in chart.server_config(values)["global"]["tls"]["frontend"]["server"]
    _plant_values(templates, values)
    _assert_refused(bundle, templates, tmp_path_factory, exported)


def test_values_that_are_not_yaml_are_one_error(bundle, templates, tmp_path):
    (templates / "helm" / "values.yaml.j2").write_text("server: [unclosed\n")
    dest = tmp_path / "out"
    export(bundle, dest, "--templates", templates).assert_one_error("values.yaml.j2", "YAML")
    assert not dest.exists()
