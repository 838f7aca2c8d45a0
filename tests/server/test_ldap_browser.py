"""A company-directory user in a real browser, outside docker: Debian's chromium (Playwright) on the
real Web UI (the ui-server 2.58.1 build, tests/support/ui_server.py, configured as compose
configures temporal-ui), which logs people in through Dex's LDAP connector (Debian's slapd) and
reaches temporal-server through the UI gate over mTLS; the gate trades each person's Dex token at
the token exchange for a bundle token holding what oidc.groups maps their directory groups to. The
UI's codec endpoint is the bundle's codec server, which the browser calls with the person's Dex
token and which maps their groups the same way.

alice is in `payments-oncall` (mapped to payments:write): she sees exactly `payments` in the UI's
namespace list, sees a workflow there with its input (stored encrypted, decrypted for her by the
codec server) and terminates it (write), and `default` shows her nothing (every call refused). Her session outlives the Dex access token (a short
oidc.token_lifetime) because the UI refreshes it at Dex; removed from the group in LDAP she loses
`payments` in the browser within that lifetime (measured); the UI's Log out ends the session.
chromium trusts the bundle's CA through an NSS database of its own; no certificate error is
ignored. A missing chromium or ui-server is a failure, never a skip."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client

from bootstrap.client import RoleCredentials
from bootstrap.core.codec import data_converter
from tests.support.cluster import LocalCluster
from tests.support.codec import bundle_keys
from tests.support.dex import Dex, claims_of
from tests.support.ldap import dex_connector, start_directory
from tests.support.ports import free_port
from tests.support.processes import stop_group
from tests.support.ui_pages import terminate_on_the_workflow_page, visible
from tests.support.ui_server import CHROMIUM, CHROMIUM_ARGS, UIServer, chromium_home
from tests.support.waits import wait_until

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

TOKEN_LIFETIME = 30  # oidc.token_lifetime: the Dex access token's life, and the bound on a removal
TIMEOUT_MS = 30_000


class BrowserCluster(LocalCluster):
    """The cluster with the Web UI on a port of its own: Dex's redirect URI and the codec's
    allowed origin are rendered from network.ui_port. The codec server decrypts for `write` on a
    namespace (the default is `admin`): the on-call reads the payloads of the namespace they act in."""

    ui_port: int = 0

    def bundle_config(self) -> dict:
        doc = super().bundle_config()
        doc["network"]["ui_port"] = self.ui_port
        doc["codec"] = {"decrypt_role": "write"}
        return doc


class Stack:
    """slapd, the cluster, Dex with the LDAP connector, the exchange, the gate, the codec server,
    the Web UI."""

    def __init__(self, work: Path):
        self.work, self.processes = work, []
        self.directory = start_directory()
        bind_pw = work / "ldap-bind-password"
        bind_pw.write_text(self.directory.service_password + "\n")
        self.dex_port = free_port()
        oidc = {"host": "localhost", "port": self.dex_port, "token_lifetime": f"{TOKEN_LIFETIME}s",
                "groups": {"admins": ["temporal-system:admin"], "payments-oncall": ["payments:write"]},
                "connectors": [dex_connector("ldap", self.directory.host, bind_pw,
                                             ca={"rootCA": str(self.directory.ca_pem)})]}
        self.cluster = BrowserCluster(work / "cluster", namespaces=("default", "payments"), oidc=oidc)
        self.cluster.ui_port = free_port()
        self.cluster.start_registered()
        self.dex = Dex(self.cluster.bundle, work, self.dex_port).start()
        self.exchange_port = free_port()
        self._spawn("exchange", ["serve-exchange", "--host", "127.0.0.1", "--port", str(self.exchange_port)],
                    self.exchange_port)
        info = work / "cluster-info.json"
        subprocess.run([sys.executable, "-m", "bootstrap", "register-namespaces", *self._config(),
                        "--address", self.cluster.address, "--cluster-info", str(info)],
                       check=True, capture_output=True, text=True, timeout=120)
        self.gate_port = free_port()
        self._spawn("gate", ["serve-ui-gate", "--host", "127.0.0.1", "--port", str(self.gate_port),
                             "--upstream", self.cluster.address, "--cluster-info", str(info),
                             "--jwks-url", f"https://localhost:{self.cluster.jwks_port}/jwks.json",
                             "--jwks-url", f"https://localhost:{self.dex_port}/dex/keys",
                             "--issuer", self.dex.issuer,
                             "--exchange-url", f"https://localhost:{self.exchange_port}/token"], self.gate_port)
        # The codec server as compose runs it: both key sources, Dex's issuer; it maps in-process.
        self.codec_port = free_port()
        self._spawn("codec", ["serve-codec", "--host", "127.0.0.1", "--port", str(self.codec_port),
                              "--jwks-url", f"https://localhost:{self.cluster.jwks_port}/jwks.json",
                              "--jwks-url", f"https://localhost:{self.dex_port}/dex/keys", "--issuer", self.dex.issuer],
                    self.codec_port)
        self.ui = UIServer(self.cluster.bundle, work, self.cluster.ui_port, f"127.0.0.1:{self.gate_port}",
                           self.dex.issuer, self.dex.client_id, self.dex.client_secret,
                           codec_endpoint=f"https://localhost:{self.codec_port}").start()

    def _config(self) -> list[str]:
        return ["--config", str(self.cluster.config_path), "--out", str(self.cluster.bundle)]

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        log = self.work / f"{name}.log"
        process = subprocess.Popen([sys.executable, "-m", "bootstrap", *argv, *self._config()],
                                   stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)

        def listening() -> bool:
            assert process.poll() is None, log.read_text()[-2000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 30, name)

    def start_workflow(self, namespace: str, workflow_id: str, payload: dict) -> None:
        """A workflow nobody works on (it stays running), started with the system role's token."""
        started = subprocess.run([*self.cluster.cli_base("system"), "workflow", "start", "--namespace", namespace,
                                  "--workflow-id", workflow_id, "--type", "Charge", "--task-queue", "payments",
                                  "--input", json.dumps(payload)], capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr

    def start_encrypted_workflow(self, namespace: str, workflow_id: str, payload: dict) -> None:
        """The same, its input encrypted with the namespace's ring as a worker's data converter
        does: the server holds ciphertext, and only the codec server can show it in the UI."""
        async def start():
            credentials = RoleCredentials.load(self.cluster.bundle, "worker", with_token=False)
            converter = data_converter(bundle_keys(self.cluster.bundle), namespace=namespace)
            client = await Client.connect(self.cluster.address, namespace=namespace, api_key=self.cluster.token("system"),
                                          tls=credentials.tls_config("localhost"), data_converter=converter)
            await client.start_workflow("Charge", payload, id=workflow_id, task_queue="payments")

        with ThreadPoolExecutor(1) as thread:  # Playwright's sync API runs an event loop in this one
            thread.submit(asyncio.run, start()).result()

    def codec_audit(self) -> list[dict]:
        lines = (self.work / "codec.log").read_text().splitlines()
        return [doc for doc in map(json.loads, (line for line in lines if line.startswith("{")))
                if doc.get("event") == "audit"]

    def workflow_status(self, namespace: str, workflow_id: str) -> str:
        shown = subprocess.run([*self.cluster.cli_base("system"), "workflow", "describe", "--namespace", namespace,
                                "--workflow-id", workflow_id, "--output", "json"], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["workflowExecutionInfo"]["status"]

    def stop(self) -> None:
        self.ui.stop()
        for process in self.processes:
            stop_group(process)
        self.dex.stop()
        self.cluster.stop()
        self.directory.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("ldap-browser"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser(stack, tmp_path_factory):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium (scripts/install-deps.sh)"
    from playwright.sync_api import sync_playwright

    home = chromium_home(tmp_path_factory.mktemp("chromium-home"), (stack.cluster.bundle / "trust" / "ca.pem").read_bytes())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        yield browser
        browser.close()


class Session:
    """One browser context (its own cookies): the page and every /api/v1 answer the UI got."""

    def __init__(self, browser, stack):
        self.stack, self.url = stack, stack.ui.url
        self.context = browser.new_context()
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.calls: list[tuple[int, str, str]] = []
        self.bodies: list[tuple[int, str, str, bytes]] = []
        self.bearer = ""
        self.dex_requests = 0  # the browser's requests to Dex: a login (or a redirect to one)
        self.page.on("response", self._answered)
        self.page.on("request", self._sent)

    def _answered(self, response) -> None:
        if response.url.startswith(self.url + "/api/v1/"):
            path = response.url.removeprefix(self.url)
            self.calls.append((response.status, response.request.method, path))
            if path.startswith("/api/v1/namespaces?"):
                try:
                    self.bodies.append((response.status, response.request.method, path, response.body()))
                except Exception:  # an aborted request has no body
                    pass

    def _sent(self, request) -> None:
        if request.url.startswith(self.stack.dex.issuer):
            self.dex_requests += 1
        auth = request.headers.get("authorization")
        if auth and request.url.startswith(self.url + "/api/"):
            self.bearer = auth

    def goto(self, path: str, patient: bool = False) -> None:
        """A navigation; the UI's own redirect may overtake it (the waits that follow check where
        it ends). `patient`: a navigation that did not commit within 15 s (it happens on this
        loaded host right after a refusal sent the UI to its login page) is left to the caller's
        wait too."""
        for attempt in range(3):
            try:
                self.page.goto(self.url + path, wait_until="commit", timeout=15_000 if patient else TIMEOUT_MS)
            except Exception as exc:
                if "ERR_NETWORK_CHANGED" in str(exc) and attempt < 2:
                    continue  # Docker added or removed an interface on this host: chromium gave up the navigation
                if "interrupted by another navigation" not in str(exc) and not (patient and "Timeout" in str(exc)):
                    raise
            return

    def log_in(self, uid: str, password: str, attempts: int = 4) -> None:
        """Dex's page: the Directory connector, its password form; then the UI's landing page,
        once the SPA's first authorized call was answered. On this loaded host the SPA's first
        calls are now and then cancelled by the browser on the landing page (HTTP 499 in the UI
        server's log) and it stays there: the login is done again then."""
        for attempt in range(attempts):
            self.calls.clear()
            self.goto("/auth/sso")
            self.page.wait_for_url(re.compile(re.escape(self.stack.dex.issuer) + r"/auth"), wait_until="commit")
            if self.page.locator("input[name=password]").count() == 0:
                self.page.get_by_text("Log in with Directory").click()
            self.page.fill("input[name=login]", uid)
            self.page.fill("input[name=password]", password)
            self.page.click("button[type=submit]")
            deadline = time.monotonic() + 25
            # The SPA takes the tokens over on its landing page: leaving before its first
            # authorized call was answered could drop them.
            while time.monotonic() < deadline:
                if self.page.url.startswith(self.url) and self.bearer and any(
                        status == 200 and path.startswith("/api/v1/cluster-info") for status, _, path in self.calls):
                    return
                self.page.wait_for_timeout(200)
            print(f"\nlogin {attempt + 1} did not land: {self.page.url} {self.calls}")
        raise AssertionError(f"the UI did not land after {attempts} logins: {self.page.url} {self.calls}")

    def refresh_status(self) -> int:
        """What the UI server's /auth/refresh answers this browser (its cookies), asked from the page."""
        for attempt in range(3):
            try:
                return self.page.evaluate("fetch('/auth/refresh', {redirect: 'manual'}).then(r => r.status)")
            except Exception as exc:  # the UI navigated meanwhile (after a logout, to its login page)
                if "Execution context was destroyed" not in str(exc) or attempt == 2:
                    raise
                self.page.wait_for_load_state()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser, stack):
    session = Session(browser, stack)
    yield session
    session.close()


def shown_after_reload(session, path: str, text: str) -> None:
    """`text` on the page at `path`, the page loaded once more if it is not there within 15 s: with
    TOKEN_LIFETIME this short the UI's token can expire while a page loads, and the page on which
    the UI then refreshes it may stay empty."""
    session.goto(path)
    try:
        session.page.get_by_text(text).first.wait_for(timeout=15_000)
    except Exception:
        print(f"\n{text} not on {path} at first: {session.calls[-8:]}")
        session.goto(path)
        session.page.get_by_text(text).first.wait_for()


def terminate(session, namespace: str, workflow_id: str) -> int:
    return terminate_on_the_workflow_page(
        session.page, f"{session.url}/api/v1/namespaces/{namespace}/workflows/{workflow_id}/terminate",
        "ended from the UI by its on-call")


def token_claims(bearer: str) -> dict:
    return claims_of(bearer.removeprefix("Bearer "))


def test_an_oncall_user_sees_exactly_the_mapped_namespace_in_the_ui(session, stack):
    session.log_in("alice", "alice-pw-1")
    assert "do+not+have+permission" not in session.page.url, session.page.url
    session.goto("/namespaces")
    session.page.get_by_role("link", name="payments").first.wait_for()
    session.page.wait_for_timeout(1000)
    # The list the UI got (the gate answered ListNamespaces for her: payments only) and showed.
    listed = [json.loads(body) for status, method, path, body in session.bodies
              if status == 200 and path.startswith("/api/v1/namespaces?")]
    assert listed and all(sorted(n["namespaceInfo"]["name"] for n in doc["namespaces"]) == ["payments"] for doc in listed)
    assert session.page.get_by_role("link", name="default", exact=True).count() == 0
    assert session.page.get_by_role("link", name="temporal-system", exact=True).count() == 0
    assert sorted(token_claims(session.bearer)["groups"]) == ["payments-oncall", "staff"]  # Dex's token: names


def test_the_oncall_user_reads_and_terminates_in_payments_and_sees_nothing_of_default(session, stack):
    mine, other = f"charge-{uuid.uuid4().hex[:8]}", f"ledger-{uuid.uuid4().hex[:8]}"
    invoice, secret = f"inv-{uuid.uuid4().hex[:10]}", f"default-only-{uuid.uuid4().hex[:10]}"
    stack.start_encrypted_workflow("payments", mine, {"invoice": invoice})
    stack.start_workflow("default", other, {"ledger": secret})
    assert invoice not in json.dumps(stack.cluster.history_events("payments", mine))  # the server holds ciphertext
    session.log_in("alice", "alice-pw-1")

    shown_after_reload(session, f"/namespaces/payments/workflows/{mine}", invoice)  # read: the workflow, its input
    # ... decrypted for her by the codec server, which the browser called with her Dex token.
    decodes = [doc for doc in stack.codec_audit() if doc["action"] == "decode" and doc["namespace"] == "payments"]
    assert any(doc["outcome"] == "decrypted" and "alice" in doc["principal"] for doc in decodes), decodes
    status = terminate(session, "payments", mine)
    if status == 401:  # the UI's token expired on the way (TOKEN_LIFETIME is short): it refreshed it
        shown_after_reload(session, f"/namespaces/payments/workflows/{mine}", invoice)
        status = terminate(session, "payments", mine)
    assert status == 200  # write
    assert stack.workflow_status("payments", mine) == "WORKFLOW_EXECUTION_STATUS_TERMINATED"

    session.calls.clear()
    session.goto("/namespaces/default/workflows")
    session.page.wait_for_timeout(3000)
    assert other not in session.page.locator("body").inner_text()  # the list shows none of default's
    session.goto(f"/namespaces/default/workflows/{other}")
    session.page.wait_for_timeout(3000)
    assert secret not in session.page.content()  # nor the page of one named in the address
    # Every call the UI made into default was refused (a 401 is the UI's own token having expired
    # with TOKEN_LIFETIME this short: it refreshes it and asks again).
    into_default = [(status, path) for status, _, path in session.calls if path.startswith("/api/v1/namespaces/default")]
    assert any(status == 403 for status, _ in into_default), into_default
    assert all(status in (401, 403) for status, _ in into_default), into_default
    assert stack.workflow_status("default", other) == "WORKFLOW_EXECUTION_STATUS_RUNNING"


def workflows_answer(session, namespace: str) -> int | None:
    """The UI's own workflow list call for `namespace` after a fresh page load; None if it made
    none because it sent the browser to log in again (Dex, or its login page with an error). A
    401 is the UI server finding the UI's token expired: the UI then refreshes it (on its login
    page, which returns to the page asked for) and asks again."""
    session.calls.clear()
    session.goto(f"/namespaces/{namespace}/workflows", patient=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answers = [status for status, method, path in session.calls
                   if path.startswith(f"/api/v1/namespaces/{namespace}/workflows?") and status != 401]
        if answers:
            return answers[-1]
        if "error=" in session.page.url or session.page.url.startswith(session.stack.dex.issuer):
            return None
        session.page.wait_for_timeout(200)
    return None


def test_the_session_outlives_the_access_token_through_refresh(session, stack):
    session.log_in("alice", "alice-pw-1")
    assert workflows_answer(session, "payments") == 200
    first = token_claims(session.bearer)
    assert first["exp"] - first["iat"] == TOKEN_LIFETIME
    time.sleep(max(0.0, first["exp"] - time.time() + 2))  # the token the UI holds is now expired
    dex_before = session.dex_requests
    status = workflows_answer(session, "payments")
    if status is None and "error=" not in session.page.url:
        # UI 2.58.1 refreshes on the 401 and asks again, but now and then the browser cancels that
        # second call (HTTP 499 in the UI server's log) and the page stays empty: the token is
        # refreshed all the same, and the next page load uses it.
        print(f"\nthe page that refreshed stalled: {session.calls}; loading it again")
        status = workflows_answer(session, "payments")
    assert status == 200, (session.page.url, session.calls)
    assert session.dex_requests == dex_before, "the browser was sent to Dex: a new login, not a refresh"
    later = token_claims(session.bearer)
    assert later["exp"] > first["exp"] and later["sub"] == first["sub"], "the UI did not refresh the token"
    assert session.page.url.startswith(f"{session.url}/namespaces/payments/workflows")  # no new login
    print(f"\npage load {time.time() - first['exp']:.1f} s past the access token's expiry: "
          f"200 with a refreshed token (exp +{later['exp'] - first['exp']} s)")


def test_logout_ends_the_session(session, stack):
    session.log_in("alice", "alice-pw-1")
    assert workflows_answer(session, "payments") == 200
    assert session.refresh_status() == 200
    session.page.get_by_test_id("user-menu-trigger").click()
    with session.page.expect_response(lambda r: r.url.startswith(session.url + "/auth/logout")) as logout:
        visible(session.page.get_by_role("menuitem", name="Log out")).click()
    assert logout.value.status in (200, 302, 303), logout.value.status
    session.page.wait_for_url(session.url + "/**", wait_until="commit")
    assert "refresh" not in {c["name"] for c in session.context.cookies(session.url)}
    assert session.refresh_status() in (400, 401, 403)  # the UI server redeems nothing for this browser
    session.goto("/namespaces/payments/workflows")
    session.page.wait_for_url(re.compile(re.escape(session.url) + r"/login\?returnUrl="), wait_until="commit")


def test_removal_from_the_ldap_group_ends_access_in_the_browser_within_the_token_lifetime(session, stack):
    """Page loads of payments' workflows, one after the other, from before alice's removal from
    payments-oncall until one is refused: none started after her token's expiry (plus the page's
    own latency) shows payments, and the refreshed token no longer names the group."""
    session.log_in("alice", "alice-pw-1")
    assert workflows_answer(session, "payments") == 200
    claims = token_claims(session.bearer)
    stack.directory.remove_member("payments-oncall", "alice")
    try:
        removed, loads = time.time(), []
        while True:
            started = time.time()
            status = workflows_answer(session, "payments")
            loads.append((round(started - removed, 1), status))
            if status != 200 and ("error=" in session.page.url or status is not None):
                break  # refused (a stalled page, None without an error, tells nothing: load again)
            assert started - removed < TOKEN_LIFETIME + 30, f"payments still shown: {loads}"
            session.page.wait_for_timeout(1000)
        # The bound: no load started after her token expired showed payments (and the loop above
        # ends at the first one that answered otherwise).
        shown_after_expiry = [(at, s) for at, s in loads if s == 200 and removed + at > claims["exp"] + 2]
        assert not shown_after_expiry, (claims["exp"] - removed, loads)
        print(f"\nin the browser, removal from the LDAP group: the UI's token (lifetime {TOKEN_LIFETIME} s) had "
              f"{claims['exp'] - removed:.1f} s left; page loads (s after removal, status): {loads}; "
              f"refused from the load started {loads[-1][0]} s after, then on {session.page.url.removeprefix(session.url)[:60]}")
        # The refreshed token (Dex read the directory again) no longer names the group; nothing
        # opens. (A load in the token's last instant is refused by the exchange as expired, before
        # the UI refreshes: the UI then needs one more load to refresh.)
        for _ in range(3):
            status = workflows_answer(session, "payments")
            assert status != 200, loads
            if "payments-oncall" not in token_claims(session.bearer)["groups"]:
                break
        assert "payments-oncall" not in token_claims(session.bearer)["groups"]
    finally:
        stack.directory.add_member("payments-oncall", "alice")
