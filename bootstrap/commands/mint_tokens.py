"""mint-tokens: one JWT per role into tokens/, re-minted only when stale (2/3 of lifetime)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..ops.expiry import Thresholds, check
from ..core.pki import utcnow
from ..ops.plan import active_signing_key, load_published_keys, plan_tokens
from ..ops.kube_secrets import ApiServer, publish
from ..store import Write, apply, locked
from .common import load, report, standard

HELP = "mint role tokens (system, worker, client, ...) signed with the active key"


def add_parser(sub, name):
    parser = sub.add_parser(
        name,
        help=HELP,
        description=HELP + ". A token is re-minted when it is past two thirds of its lifetime, signed "
        "by another key, or its permissions changed; otherwise it is kept.",
    )
    standard(parser)
    parser.add_argument("--role", action="append", help="only this role (repeatable; default: all roles)")
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="keep running as a token refresher: re-check every SECONDS and re-mint tokens past two "
        "thirds of their lifetime (clients re-read the files; see bootstrap.client.TokenFileWatcher)",
    )
    parser.add_argument(
        "--kubernetes-secrets",
        metavar="PREFIX",
        help="inside Kubernetes: also put each re-minted token into the Secrets export-helm made "
        "(PREFIX-role-<role>, and PREFIX-admintools for system), with the pod's service account",
    )
    parser.add_argument(
        "--expiry-metrics",
        type=Path,
        metavar="FILE",
        help="after every check, write check-expiry's Prometheus metrics for tokens/ to FILE (bundle.yaml's "
        "monitoring thresholds), for serve-expiry-metrics --textfile: tokens stay with the refresher",
    )
    parser.set_defaults(run=run)


def plan(config, layout, force, now, role_names=None):
    roles = [config.role(name) for name in role_names] if role_names else None
    key = active_signing_key(layout, load_published_keys(layout))
    actions, _ = plan_tokens(config, layout, key, force, now, roles)
    return actions


def run(args) -> int:
    config, layout = load(args)
    for name in args.role or ():
        config.role(name)  # an unknown role fails before the lock creates the output directory
    api = ApiServer.in_cluster() if args.kubernetes_secrets else None
    while True:
        with locked(layout):
            actions = apply(layout, plan(config, layout, args.force, utcnow(), args.role))
        report(layout, actions, args.quiet or bool(args.watch))
        if api is not None:
            _publish(api, args.kubernetes_secrets, layout, actions)
        if args.expiry_metrics is not None:
            _write_expiry_metrics(args.expiry_metrics, config, layout)
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)


def _write_expiry_metrics(path: Path, config, layout) -> None:
    from ..ops.expiry_report import exit_code
    from .common import write_prometheus

    monitoring = config.monitoring
    report = check(layout.root / "tokens", utcnow(), Thresholds(monitoring.expiry_warn, monitoring.expiry_crit))
    write_prometheus(path, report, exit_code(report))  # a full disk prints an error; tokens go on


def _publish(api: ApiServer, prefix: str, layout, actions) -> None:
    minted = {a.path.stem: a.data for a in actions if isinstance(a, Write) and a.path == layout.token(a.path.stem)}
    for name in publish(api, prefix, minted):
        print(f"updated Secret {name}", flush=True)
