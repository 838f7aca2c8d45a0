"""`make up` time to ready: the secured stack (mTLS everywhere, JWT authorization) beside the same
stack with TLS and authorization off, measured in one run on the same engine and images.

    python3 benchmarks/bench_make_up.py [--rounds N] [--json]

For each variant: a cold start (fresh volumes: bootstrap, initdb, schema creation, namespace
registration) and N warm restarts (`docker compose down` + `make up`, volumes kept). "Ready" is
what `make up` waits for: every long-running service healthy, every one-shot job done.
The plaintext variant is docker-compose.prod.yml plus docker/bench/docker-compose.plain.yml and
a copy of the rendered server config without global.tls, global.authorization and database TLS.
Images are the locally built stand-ins (scripts/build-images.sh standins); building them is not
timed. Everything runs on this machine's Docker engine; the stacks are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bootstrap.config import load_config  # noqa: E402
from bootstrap.render import render_all  # noqa: E402
from tests.docker.compose_stack import ComposeStack, build_standin_images, unique_project  # noqa: E402

PLAIN_OVERRIDE = "docker/bench/docker-compose.plain.yml"


def plain_server_config(bundle_yaml: Path, out: Path) -> Path:
    """The server config the bootstrap renders, with TLS and authorization taken out."""
    doc = yaml.safe_load(render_all(load_config(bundle_yaml))["temporal.yaml"])
    doc["global"].pop("tls", None)
    doc["global"].pop("authorization", None)
    for store in doc["persistence"]["datastores"].values():
        store.get("sql", {}).pop("tls", None)
    out.write_text("# Benchmark only: TLS and authorization removed.\n" + yaml.safe_dump(doc, sort_keys=False))
    out.chmod(0o644)
    return out


def measure(stack: ComposeStack, rounds: int) -> dict:
    try:
        cold = stack.up()
        warm = []
        for _ in range(rounds):
            stack.down()
            warm.append(stack.up())
        return {"cold_s": cold, "warm_s": warm}
    finally:
        stack.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="warm restarts per variant (default: 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--healthcheck-interval", default="1s",
        help="HEALTHCHECK_INTERVAL for both stacks (default: 1s, so readiness is seen within a second; "
        "operators run with 5s)",
    )
    args = parser.parse_args()

    images = build_standin_images()
    with tempfile.TemporaryDirectory(prefix="bench-make-up-") as tmp:
        tmp = Path(tmp)
        secured = ComposeStack(unique_project("tbbenchsec"), tmp / "secured", images)
        plain_dir = tmp / "plain"
        plain_dir.mkdir()
        plain = ComposeStack(
            unique_project("tbbenchplain"),
            plain_dir,
            images,
            compose_files=("docker-compose.prod.yml", PLAIN_OVERRIDE),
        )
        plain.extra_env["BENCH_PLAIN_TEMPORAL_CONFIG"] = str(plain_server_config(plain.config, plain_dir / "temporal.yaml"))
        for stack in (secured, plain):
            stack.extra_env["HEALTHCHECK_INTERVAL"] = args.healthcheck_interval
        plain.compose("config", "--quiet")  # the override must validate before anything is timed

        results = {"secured": measure(secured, args.rounds), "plaintext": measure(plain, args.rounds)}

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"make up: time to ready (all long-running services healthy, one-shot jobs done); "
          f"health checks every {args.healthcheck_interval}")
    print(f"{'variant':<12}{'cold start':>12}{'warm median':>13}{'warm runs':>24}")
    for name, r in results.items():
        warm = " ".join(f"{w:.1f}" for w in r["warm_s"])
        median = statistics.median(r["warm_s"]) if r["warm_s"] else float("nan")
        print(f"{name:<12}{r['cold_s']:>11.1f}s{median:>12.1f}s{warm:>24}")
    sec, pln = results["secured"], results["plaintext"]
    print(
        f"security overhead: cold {sec['cold_s'] - pln['cold_s']:+.1f}s, warm "
        f"{statistics.median(sec['warm_s']) - statistics.median(pln['warm_s']):+.1f}s (median)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
