"""login: a human at a terminal logs in (OIDC authorization code + PKCE, loopback redirect) and gets
a Temporal CLI profile with a short-lived token and the client certificate."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from datetime import datetime, timezone
from pathlib import Path

from ..core.config import load_config
from ..core.durations import human_duration, parse_duration
from ..errors import BundleError
from ..ops.login import (Options, current, default_cli_config, load_session, login, needs_refresh, refresh, resolve)
from .common import add_config, add_out

HELP = "log in at the terminal (OIDC + PKCE, loopback redirect) and write a temporal CLI profile with the token"
DESCRIPTION = """Log in through the bundle's Dex (or oidc.external, or --issuer) with the authorization
code flow + PKCE (S256): a listener on http://127.0.0.1:<ephemeral port>/callback takes exactly one
request, checks state, and closes; the ID token is verified (the issuer's JWKS, iss, aud, nonce, exp).
The token the server accepts is then written as api_key into a profile of the temporal CLI's config
(TEMPORAL_CONFIG_FILE, else ~/.config/temporalio/temporal.toml; mode 0600) with the address, the
client certificate and key, the CA and the server name; the refresh token is kept 0600 beside it.
Run again: nothing to do while the token is valid, a refresh when it is near expiry (--refresh-within),
a new browser login when that fails. The device flow is never used.
Then: temporal workflow list --profile NAME [-n NAMESPACE]."""


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config(parser)
    add_out(parser)
    parser.add_argument("--profile", default=os.environ.get("TEMPORAL_PROFILE") or "bundle",
                        help="temporal CLI profile to write (env TEMPORAL_PROFILE; default: bundle)")
    parser.add_argument("--cli-config", default=None, metavar="FILE",
                        help="the temporal CLI's config file (default: TEMPORAL_CONFIG_FILE, else "
                        "~/.config/temporalio/temporal.toml)")
    parser.add_argument("--issuer", default="", help="OIDC issuer URL (default: bundle.yaml's Dex or oidc.external.issuer)")
    parser.add_argument("--client-id", default="", help="the CLI's public OIDC client (default: temporal-cli, Dex's)")
    parser.add_argument("--audience", default="", help="the audience the server checks (default: bundle.yaml's jwt.audience)")
    parser.add_argument("--ca-file", action="append", default=[], metavar="PEM",
                        help="extra CA for the issuer and the exchange, repeatable (default: the bundle's trust/ca.pem)")
    parser.add_argument("--address", default="", help="frontend host:port (default: localhost:<network.frontend_port>)")
    parser.add_argument("--server-name", default="", help="TLS server name (default: cluster.frontend_host)")
    parser.add_argument("--tls-ca", default="", help="server CA file (default: <out>/trust/ca.pem)")
    parser.add_argument("--tls-cert", default="", help="client certificate (default: <out>/clients/<cert-role>.pem)")
    parser.add_argument("--tls-key", default="", help="client key (default: <out>/clients/<cert-role>.key)")
    parser.add_argument("--cert-role", default="client", help="whose client certificate to use from --out (default: client); "
                        "it opens TLS only, the token decides what you may do")
    parser.add_argument("--namespace", default="", help="the profile's default namespace")
    parser.add_argument("--connector", default="",
                        help="Dex connector to log in with (e.g. ldap), skipping Dex's choice of connectors")
    parser.add_argument("--exchange-url", default="",
                        help="trade the IdP's ID token for a bundle token at this RFC 8693 token exchange (serve-exchange)")
    parser.add_argument("--port", type=int, default=0, help="loopback port for the callback (default: an ephemeral one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the browser (default: 300)")
    parser.add_argument("--no-browser", action="store_true", help="only print the URL, never open a browser")
    parser.add_argument("--refresh", action="store_true", help="refresh the profile's token now (no browser)")
    parser.add_argument("--refresh-within", default="5m",
                        help="refresh instead of doing nothing when the token expires within this (default: 5m)")
    parser.set_defaults(run=run)


def run(args) -> int:
    cli_config = (Path(args.cli_config).expanduser() if args.cli_config else default_cli_config()).absolute()
    if args.refresh:
        _report(refresh(cli_config, args.profile).session, cli_config, "refreshed")
        return 0
    if not 0 <= args.port <= 65535 or args.timeout <= 0:
        raise BundleError("--port must be 0..65535 and --timeout positive")
    window = parse_duration(args.refresh_within, "--refresh-within")
    config_path = Path(args.config)
    config = load_config(config_path) if config_path.is_file() else None
    out = Path(args.out)
    options = Options(profile=args.profile, issuer=args.issuer, client_id=args.client_id, audience=args.audience,
                      ca_files=tuple(args.ca_file), address=args.address, server_name=args.server_name,
                      tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, cert_role=args.cert_role,
                      namespace=args.namespace, exchange_url=args.exchange_url, connector=args.connector)
    target, profile = resolve(options, config, out.resolve() if out.is_dir() else None)
    session = current(load_session(cli_config, args.profile), target, profile, cli_config)
    if session is not None:
        if not needs_refresh(session, window):
            _report(session, cli_config, "still logged in")
            return 0
        try:
            _report(refresh(cli_config, args.profile).session, cli_config, "refreshed")
            return 0
        except BundleError as exc:
            print(f"refresh failed ({exc}); logging in again", flush=True)
    outcome = login(target, profile, cli_config, announce=lambda url: _announce(url, args.no_browser),
                    port=args.port, timeout=args.timeout)
    _report(outcome.session, cli_config, "logged in")
    return 0


def _announce(url: str, no_browser: bool) -> None:
    print(f"Open this URL in a browser to log in:\n{url}", flush=True)
    # A browser only where one can show: webbrowser would otherwise start a text browser in this terminal.
    if not no_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass


def _report(session, cli_config: Path, what: str) -> None:
    until = datetime.fromtimestamp(session.expires_at, timezone.utc)
    left = until - datetime.now(timezone.utc)
    who = session.email or session.subject
    name = session.profile.name
    print(f"{what} as {who}: profile {name} in {cli_config} (token valid until {until:%Y-%m-%d %H:%M:%S} UTC, "
          f"{human_duration(left) if left.total_seconds() > 0 else 'expired'})")
    config_flag = "" if cli_config == default_cli_config().absolute() else f" --config-file {cli_config}"
    print(f"  temporal workflow list --profile {name}{config_flag}")
