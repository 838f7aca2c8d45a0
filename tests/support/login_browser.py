"""A person's browser, for terminal login's tests: follow Dex's redirects with cookies, fill its
password form, stop at the loopback callback (plain http) and deliver it as a browser would.
Dex itself runs from tests/support/dex.py."""

from __future__ import annotations

import html.parser
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

from tests.support.waits import HarnessError


class _Forms(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
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

    def log_in(self, authorization_url: str, login: str, password: str, connector: str = "local") -> str:
        """Dex's password form, filled (on its page of connectors, the `connector` button clicked
        first); the callback URL Dex redirects to (not yet fetched)."""
        page = self.until_callback(authorization_url)
        if page.location:
            return page.location  # Dex answered with a redirect (an error) before any form
        parser = _Forms()
        parser.feed(page.body)
        choice = next((link for link in parser.links if f"/auth/{connector}" in link), None)
        if not any("password" in f["fields"] for f in parser.forms) and choice:
            page = self.until_callback(urllib.parse.urljoin(page.url, choice))
            if page.location:
                return page.location
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
