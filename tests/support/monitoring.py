"""The Grafana files the bundle provisions, read the way the unit and docker tiers check them."""

from __future__ import annotations

import json

from tests.support.paths import REPO

GRAFANA = REPO / "docker" / "grafana"


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [t["expr"] for t in panel["targets"]]
    return exprs
