"""The real Dex (v2.45.1, the cached cgo build of scripts/build-dex.sh) on loopback, serving the
bundle's own rendered config: ops/oidc.render_dex_config with the secrets `init` generated, only
the listen address, the telemetry port and the SQLite file moved for a test. Its HTTPS certificate
is the bundle's dex/server.pem (server CA), as in compose.

Also a minimal browser for it: follow redirects with cookies, post the password form, stop at the
loopback callback (or deliver it), as a person's browser would."""

from __future__ import annotations

import html.parser
import os
import signal
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path

import yaml

from bootstrap.core.config import load_config
from bootstrap.ops.oidc import admin_hash_path, client_secret_path, grafana_secret_path, render_dex_config
from bootstrap.store import Layout
from tests.support.paths import REPO
from tests.support.ports import free_port
from tests.support.waits import HarnessError, wait_until


def dex_binary() -> Path:
    out = subprocess.run(["bash", str(REPO / "scripts" / "build-dex.sh")], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise HarnessError(f"building dex failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class DexProcess:
    config_path: Path  # bundle.yaml, with oidc.host localhost and oidc.port free
    bundle: Path
    workdir: Path
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.config = load_config(self.config_path)
        self.layout = Layout(self.bundle.resolve())
        self.log = self.workdir / "dex.log"

    @property
    def issuer(self) -> str:
        return self.config.oidc.issuer

    @property
    def ca_file(self) -> Path:
        return self.layout.trust_bundle

    def render(self) -> Path:
        layout = self.layout
        text = render_dex_config(self.config, layout, admin_hash_path(layout).read_text().strip(),
                                 client_secret_path(layout).read_text().strip(),
                                 grafana_secret_path(layout).read_text().strip())
        doc = yaml.safe_load(text)
        doc["storage"]["config"]["file"] = str(self.workdir / "dex.db")
        doc["web"]["https"] = f"127.0.0.1:{self.config.oidc.port}"
        doc["telemetry"]["http"] = f"127.0.0.1:{free_port()}"
        path = self.workdir / "dex.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.chmod(path, 0o600)
        return path

    def start(self, timeout: float = 30) -> "DexProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.render()
        self.process = subprocess.Popen([str(dex_binary()), "serve", str(config)], stdout=open(self.log, "ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            if self.process.poll() is not None:
                raise HarnessError(f"dex exited: {self.log.read_text(errors='replace')[-2000:]}")
            url = f"{self.issuer}/.well-known/openid-configuration"
            return urllib.request.urlopen(url, context=context, timeout=2).status == 200

        wait_until(ready, timeout, "dex discovery")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- a browser


class _Forms(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action", ""), "method": (attrs.get("method") or "get").lower(),
                               "fields": {}})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value") or ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


@dataclass
class Page:
    url: str
    status: int
    body: str
    location: str = ""


class Browser:
    """Cookies, redirects followed one by one, the bundle's CA trusted: enough for Dex's login pages."""

    def __init__(self, ca_file: Path):
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect(),
                                                  urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=self.context))

    def fetch(self, url: str, form: dict | None = None) -> Page:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(urllib.request.Request(url, data=data), timeout=15) as response:
                return Page(url, response.status, response.read().decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            return Page(url, exc.code, exc.read().decode(errors="replace"),
                        urllib.parse.urljoin(url, exc.headers.get("Location") or ""))

    def until_callback(self, url: str, form: dict | None = None) -> Page:
        """Follow redirects from url until one points at plain http (the loopback callback), which is
        returned unfetched (location); or a page with content."""
        page = self.fetch(url, form)
        for _ in range(10):
            if page.status not in (301, 302, 303, 307, 308):
                return page
            if page.location.startswith("http://"):
                return page
            page = self.fetch(page.location)
        raise HarnessError(f"too many redirects from {url}")

    def log_in(self, authorization_url: str, login: str, password: str) -> str:
        """Dex's password form, filled; the callback URL Dex redirects to (not yet fetched)."""
        page = self.until_callback(authorization_url)
        if page.location:
            return page.location  # Dex answered with a redirect (an error) before any form
        parser = _Forms()
        parser.feed(page.body)
        form = next((f for f in parser.forms if "password" in f["fields"]), None)
        if form is None:
            raise HarnessError(f"no password form at {page.url} (HTTP {page.status}): {page.body[:500]}")
        fields = {**form["fields"], "login": login, "password": password}
        done = self.until_callback(urllib.parse.urljoin(page.url, form["action"]), fields)
        if not done.location:
            raise HarnessError(f"Dex did not redirect after the password (HTTP {done.status}): {done.body[:500]}")
        return done.location

    def deliver(self, callback_url: str) -> Page:
        """The browser's last step: GET the loopback callback."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with direct.open(callback_url, timeout=15) as response:
                return Page(callback_url, response.status, response.read().decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            return Page(callback_url, exc.code, exc.read().decode(errors="replace"))
