"""Options and helpers shared by the bootstrap commands."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import backend
from ..core.config import BundleConfig, load_config
from ..errors import BundleError
from ..servers import MAX_CONNECTIONS
from ..store import Action, Layout, Skip, describe, parse_owners

if TYPE_CHECKING:  # the expiry helpers import their ops lazily: most commands never check expiry
    from ..ops.expiry import Report, Thresholds

MAX_CONNECTIONS_HELP = f"open connections at most; the oldest idle one makes room (default: {MAX_CONNECTIONS})"
FORCE_HELP = "replace existing files, including the CA and the signing key (every client must then be re-issued)"


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("BUNDLE_CONFIG", "bundle.yaml"),
        help="bundle config file (env BUNDLE_CONFIG; default: ./bundle.yaml)",
    )


def add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=os.environ.get("BUNDLE_DIR", "certs"),
        help="bundle directory for keys, certs, tokens and rendered config (env BUNDLE_DIR; default: ./certs)",
    )


def add_owner(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--owner",
        action="append",
        default=os.environ.get("BUNDLE_OWNERS", "").split(),
        metavar="DIR=UID[:GID]",
        help="owner of files written under a top-level directory, for containers running as "
        "another user (repeatable; env BUNDLE_OWNERS, space-separated), e.g. postgres=999:999",
    )


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def standard(parser: argparse.ArgumentParser, force: bool = True) -> None:
    add_config(parser)
    add_out(parser)
    if force:
        add_force(parser)
    add_owner(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only what changed")


def load(args, keys: bool = True) -> tuple[BundleConfig, Layout]:
    """keys=False: a command that never uses a CA or signing key, so it runs in a container without
    the PKCS#11 token and its PIN (namespace registration, rendering, the admin password)."""
    config = load_config(args.config)
    layout = Layout(Path(args.out).resolve(), parse_owners(getattr(args, "owner", [])))
    if keys:
        backend.activate(config)
    return config, layout


def report(layout: Layout, actions: list[Action], quiet: bool = False) -> None:
    for action in actions:
        if quiet and isinstance(action, Skip):
            continue
        if isinstance(action, Skip):
            print(f"{layout.relative(action.path)}: {action.reason}")
        else:
            print(describe(layout, action))


def add_listen(parser: argparse.ArgumentParser, port_help: str, port_default: int | None = None) -> None:
    """--host and --port of a serve-* command."""
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=port_default, help=port_help)


def add_max_connections(parser: argparse.ArgumentParser, default: int | None = MAX_CONNECTIONS,
                        help_text: str = MAX_CONNECTIONS_HELP) -> None:
    parser.add_argument("--max-connections", type=int, default=default, help=help_text)


def check_max_connections(value: int | None) -> None:
    """None: the service's own default."""
    if value is not None and value < 1:
        raise BundleError("--max-connections must be at least 1")


def start_service(what: str, host: str, port: int, make_server):
    """make_server() or one error line: a port in use or a bad certificate is not a traceback."""
    try:
        return make_server()
    except (OSError, ssl.SSLError) as exc:
        raise BundleError(f"cannot start {what} on {host}:{port}: {exc}") from None


def serve_until_interrupted(server) -> int:
    """Run an HTTP(S) server until SIGINT/SIGTERM-as-KeyboardInterrupt, then close its socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def thresholds_of(args) -> Thresholds:
    """--warn/--crit, else --config's (or env BUNDLE_CONFIG's, when that file exists) thresholds."""
    from ..ops.expiry_report import thresholds_from

    return thresholds_from(args.warn, args.crit, args.config, os.environ.get("BUNDLE_CONFIG"))


def write_prometheus(path: Path, report: Report, code: int) -> int:
    """The expiry metrics textfile; a failed write is one error line and exit code 3."""
    from ..ops.expiry_report import UNKNOWN, write_prometheus as write_prometheus_file

    try:
        write_prometheus_file(path, report, code)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return UNKNOWN
    return code
