"""serve-expiry-metrics: check-expiry as a Prometheus exporter (plain HTTP, monitoring network only).

Every scrape of /metrics runs the check afresh over DIR's certificates (and, with --jwks-url, the
JWKS the server fetches), with bundle.yaml's thresholds, so the exporter and `check-expiry` agree.
Tokens are bearer secrets: the exporter is not meant to read them. The token refresher, which
holds them anyway, writes their check as a textfile (`mint-tokens --watch --expiry-metrics FILE`);
--textfile serves that file verbatim at /metrics/tokens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..core.durations import parse_duration
from ..errors import BundleError
from ..ops.expiry import check, fetch_jwks
from ..core.pki import utcnow
from ..ops.expiry_report import exit_code, prometheus_text
from .common import add_listen, add_max_connections, add_out, check_max_connections, serve_until_interrupted, thresholds_of

HELP = "serve check-expiry's metrics over HTTP for Prometheus (/metrics, /metrics/tokens, /healthz)"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def add_parser(sub, name):
    parser = sub.add_parser(name, help=HELP, description=__doc__.split("\n\n", 1)[1])
    add_out(parser)
    option = parser.add_argument
    option("directory", nargs="?", metavar="DIR", help="directory to check on every scrape (default: --out)")
    option("--config", default=None, metavar="FILE", help="bundle.yaml with the monitoring thresholds (env BUNDLE_CONFIG)")
    add_listen(parser, "port (default: 9464)", 9464)
    option("--jwks-url", metavar="URL", help="also report whether this JWKS can be fetched (temporal_bundle_jwks_up)")
    option("--ca-file", type=Path, metavar="FILE", help="CA for an https --jwks-url (default: DIR/trust/ca.pem)")
    option("--timeout", default="5s", metavar="DURATION", help="timeout for fetching --jwks-url (default: 5s)")
    option("--textfile", type=Path, metavar="FILE", help="a metrics file to serve at /metrics/tokens")
    option("--backup-textfile", type=Path, metavar="FILE", help="the db-backup service's report to serve at /metrics/backup")
    add_max_connections(parser)
    parser.set_defaults(run=run, warn=None, crit=None)


def run(args) -> int:
    from ..servers.http import Limits
    from ..servers.service import Service  # aiohttp: only this command and the HTTPS servers need it

    thresholds = thresholds_of(args)  # a bad config fails now, not on the first scrape
    directory = Path(args.directory or args.out).resolve()
    timeout = parse_duration(args.timeout, "--timeout")
    if not 1 <= args.port <= 65535:
        raise BundleError(f"--port must be 1-65535, got {args.port}")
    check_max_connections(args.max_connections)

    def scrape() -> str:
        jwks = None
        if args.jwks_url:
            jwks = fetch_jwks(args.jwks_url, args.ca_file or directory / "trust" / "ca.pem", timeout)
        report = check(directory, utcnow(), thresholds, jwks)
        return prometheus_text(report, exit_code(report))

    try:  # the guarded listener: capped connections, header deadlines, bounded request heads
        server = Service(exporter_app(OneScrapeAtATime(scrape), args.textfile, args.backup_textfile), args.host, args.port, None,
                         Limits(max_connections=args.max_connections))
    except OSError as exc:
        raise BundleError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving expiry metrics of {directory} at http://{args.host}:{args.port}/metrics", flush=True)
    return serve_until_interrupted(server)


class OneScrapeAtATime:
    """The check runs in a worker thread, one at a time: requests that arrive while it runs share
    its result. A flood of /metrics requests costs one check's memory (a JWKS of at most 1 MiB,
    the certificates), not one per request."""

    def __init__(self, scrape):
        self.scrape, self._running = scrape, None

    async def text(self) -> str:
        if self._running is None:
            self._running = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, self.scrape))
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, _future) -> None:
        self._running = None


def exporter_app(scrapes: OneScrapeAtATime, textfile: Path | None, backup_textfile: Path | None = None):
    from aiohttp import web

    async def metrics(_request):
        return web.Response(body=(await scrapes.text()).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def tokens(request):
        path = textfile if request.path == "/metrics/tokens" else backup_textfile
        if path is None:
            raise web.HTTPNotFound(text=f"no file to serve at {request.path}\n")
        try:
            body = path.read_bytes()
        except OSError as exc:  # the scrape fails: up == 0 for the job, which alerts
            raise web.HTTPServiceUnavailable(text=f"cannot read {path}: {exc.strerror or exc}\n") from None
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_request):
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=1024)  # GET only: no body is ever read
    app.add_routes([web.get("/metrics", metrics), web.get("/metrics/tokens", tokens), web.get("/metrics/backup", tokens),
                    web.get("/healthz", healthz)])
    return app
