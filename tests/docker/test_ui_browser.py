"""The Web UI in a real headless browser (Debian's chromium driven by Playwright) against the
shared `make up` stack: login through Dex, roles from groups, payloads decrypted per role.

chromium is launched by path (no browser download) with a HOME of its own whose NSS database
(`certutil`, libnss3-tools) trusts the bundle's CA and nothing else of ours: certificate errors
are not ignored, and a certificate from a foreign CA is refused. Every response body the browser
received is kept and checked for secrets at the end. A missing chromium is a failure, never a
skip.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import uuid
from pathlib import Path

import pytest

from tests.support.ui_pages import terminate_on_the_workflow_page, visible
from tests.support.ui_server import CHROMIUM, CHROMIUM_ARGS, chromium_home

pytestmark = pytest.mark.docker

TIMEOUT_MS = 30_000
# How chromium reports a navigation Docker's interface changes aborted (or a redirect racing it).
NETWORK_CHANGED = ("ERR_NETWORK_CHANGED", "chrome-error://", "did not land after login")


class UI:
    """The stack as a browser sees it, plus what the tests compare against."""

    def __init__(self, stack):
        self.stack = stack
        self.url = f"https://localhost:{stack.ui_port}"
        self.dex = f"https://auth.localhost:{stack.oidc_port}/dex"
        self.codec = f"https://localhost:{stack.codec_port}"
        self.secret_input = f"ui-secret-{uuid.uuid4().hex[:10]}"
        self.workflow_id = f"ui-wf-{uuid.uuid4().hex[:8]}"
        self.bodies: list[tuple[str, bytes]] = []

    def admin_password(self) -> str:
        shown = self.stack.make("admin-password").stdout
        match = re.search(r"password: (\S+)", shown)
        assert match, shown
        return match.group(1)


@pytest.fixture(scope="module")
def ui(running_stack):
    ui = UI(running_stack)
    started = running_stack.run_client("start-encrypted", ui.workflow_id, "default", ui.secret_input,
                                       volumes=("codec-keys", "codec-kek"))
    assert started["ok"], started
    ui.password = ui.admin_password()
    ui.ca = running_stack.read_bundle_file("trust/ca.pem")
    files = running_stack.read_bundle_files("ui/server.pem", "dex/server.pem", "codec/server.pem", "ui/client.key",
                                            "ui-gate/client.key", "ui-gate/server.key",
                                            "ui/oidc-client-secret", "private/jwt/active", "codec-keys/keys.json")
    kid = files["private/jwt/active"].decode().strip()
    signing = running_stack.read_bundle_files(f"private/jwt/{kid}.key")[f"private/jwt/{kid}.key"]
    ui.secrets = {
        "JWT signing key": _pem_body(signing),
        "UI client key": _pem_body(files["ui/client.key"]),
        "UI gate client key": _pem_body(files["ui-gate/client.key"]),
        "UI gate server key": _pem_body(files["ui-gate/server.key"]),
        "Dex client secret": files["ui/oidc-client-secret"].strip(),
        "codec data keys": files["codec-keys/keys.json"].strip()[:200],
    }
    return ui


def _pem_body(pem: bytes) -> bytes:
    """The base64 of a PEM key without its armour or line breaks: found even if re-wrapped."""
    return b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))[:64]


@pytest.fixture(scope="module")
def browser(ui, tmp_path_factory):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install chromium (scripts/install-deps.sh)"
    from playwright.sync_api import sync_playwright

    home = chromium_home(tmp_path_factory.mktemp("chromium-home"), ui.ca)
    # page.request (the tests' direct API calls) goes through Playwright's Node driver, not
    # chromium: it trusts the same CA through NODE_EXTRA_CA_CERTS, read when the driver starts.
    ca = home / "bundle-ca.pem"
    ca.write_bytes(ui.ca)
    before = os.environ.get("NODE_EXTRA_CA_CERTS")
    os.environ["NODE_EXTRA_CA_CERTS"] = str(ca)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                 env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
            yield browser
            browser.close()
    finally:
        if before is None:
            os.environ.pop("NODE_EXTRA_CA_CERTS", None)
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = before


@pytest.fixture
def page(browser, ui, request):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.bearer = {}
    page.api_calls = []
    page.failed_requests = []

    def keep(response):
        try:
            ui.bodies.append((response.url, response.body()))
        except Exception:  # redirects and aborted requests have no body
            pass

    def bearer(request):
        auth = request.headers.get("authorization")
        if auth and request.url.startswith(ui.url + "/api/"):
            page.bearer["value"] = auth

    def api_call(response):
        if response.url.startswith(ui.url + "/api/"):
            page.api_calls.append(f"{response.status} {response.request.method} {response.url.removeprefix(ui.url)}")

    page.on("response", keep)
    page.on("request", bearer)
    page.on("response", api_call)
    page.on("requestfailed", lambda r: page.failed_requests.append(f"{r.failure} {r.url[:120]}"))
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(what_the_page_showed(page))
    context.close()


def what_the_page_showed(page) -> str:
    """A failed test's page: where it was, the UI's API calls and their statuses, its text."""
    try:
        text = page.inner_text("body", timeout=5000)
    except Exception as exc:  # a page that never rendered
        text = f"(no text: {str(exc).splitlines()[0]})"
    calls = "\n".join(page.api_calls[-40:]) or "(none)"
    failed = "\n".join(page.failed_requests[-20:]) or "(none)"
    return (f"\npage at failure: {page.url}\nits last API calls:\n{calls}\nrequests that failed:\n{failed}"
            f"\nits text:\n{text[:2000]}")


def retried(action, attempts: int = 4, also: tuple[str, ...] = ()):
    """chromium aborts a navigation with ERR_NETWORK_CHANGED whenever Docker adds or removes a
    container's interface on this host (other tests, other stacks): such a step is run again.
    `also`: other messages that mean the same (a page whose script load was cut off never
    makes the call a step waits for: "Timeout")."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # playwright's Error and TimeoutError
            if not any(m in str(exc) for m in NETWORK_CHANGED + also) or attempt == attempts - 1:
                raise


def login(page, ui, email: str, password: str) -> None:
    retried(lambda: _login(page, ui, email, password))


def _login(page, ui, email: str, password: str) -> None:
    try:
        page.goto(ui.url + "/auth/sso", wait_until="commit")
    except Exception as exc:  # the UI's redirect to Dex can overtake the first commit
        if f"interrupted by another navigation to \"{ui.dex}/auth" not in str(exc):
            raise
    page.wait_for_url(re.compile(re.escape(ui.dex) + r"/auth/local/login"), wait_until="commit")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation(wait_until="commit"):
        page.click("button[type=submit]")


def logged_in(page, ui, email: str, password: str) -> None:
    retried(lambda: _logged_in(page, ui, email, password))


def _logged_in(page, ui, email: str, password: str) -> None:
    login(page, ui, email, password)
    for _ in range(100):
        cookies = {c["name"]: c for c in page.context.cookies(ui.url)}
        if "refresh" in cookies:
            break
        page.wait_for_timeout(200)
    assert cookies["refresh"]["secure"] and cookies["refresh"]["httpOnly"], cookies
    # The SPA picks the tokens up on its landing page; leaving earlier would drop them.
    landed = re.compile(re.escape(ui.url) + r"/(namespaces/|login\?.*error=)")
    for _ in range(150):
        if landed.match(page.url):
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"the UI did not land after login: {page.url}")


def workflow_page(page, ui) -> tuple[str, int]:
    """The workflow's page once the UI has asked the codec server (as the browser does, with the
    user's token) to decode its history; the page and the codec server's status."""
    def visit():
        with page.expect_response(lambda r: r.url.startswith(ui.codec + "/decode")) as decoded:
            page.goto(f"{ui.url}/namespaces/default/workflows/{ui.workflow_id}")
        return decoded

    decoded = retried(visit, attempts=3, also=("Timeout",))
    page.get_by_text(ui.workflow_id).first.wait_for()
    page.wait_for_timeout(2000)  # the page renders what the codec returned
    return page.content(), decoded.value.status


def api(page, ui, method: str, path: str) -> int:
    """A call through the UI server with the token the UI itself sent (the user's Dex token)."""
    headers = {"Authorization": page.bearer["value"]} if page.bearer.get("value") else {}
    response = page.request.fetch(ui.url + path, method=method, headers=headers, data="{}" if method == "POST" else None)
    return response.status


def test_admin_logs_in_through_dex_sees_namespaces_and_the_decrypted_input(page, ui):
    logged_in(page, ui, "admin@example.com", ui.password)

    def namespaces_listed():
        page.goto(ui.url + "/namespaces")
        for namespace in ("default", "orders"):
            page.get_by_role("link", name=namespace).first.wait_for()

    # A page whose script load Docker's interface changes cut off never renders the list.
    retried(namespaces_listed, attempts=3, also=("Timeout",))
    html, status = workflow_page(page, ui)
    assert status == 200
    assert ui.secret_input in html, "the admin's UI did not show the decrypted input"
    assert page.bearer.get("value", "").startswith("Bearer ")


# The two cluster-scoped reads every page of UI 2.58.1 makes before anything else: its (app)
# layout awaits GetClusterInfo (a 403 sends the browser to the login page with "you do not have
# permission") and lists namespaces. The frontend grants them only to `temporal-system:<role>`;
# the UI gate (ui-gate) answers them for a user whose verified token names namespaces.
NOT_ALLOWED = "do+not+have+permission"


def _api_calls(page, ui) -> list[tuple[int, str, str]]:
    calls: list[tuple[int, str, str]] = []
    page.on("response", lambda r: calls.append((r.status, r.request.method, r.url.removeprefix(ui.url)))
            if r.url.startswith(ui.url + "/api/v1/") else None)
    return calls


def _goto(page, url: str) -> None:
    """A navigation the UI's own redirect may overtake (the wait that follows checks where it ends)."""
    def go():
        try:
            page.goto(url, wait_until="commit")
        except Exception as exc:
            if "interrupted by another navigation" not in str(exc):
                raise
    retried(go, also=("Timeout",))


def _reader_logged_in(page, ui) -> list[tuple[int, str, str]]:
    """The reader logged in and landed; the UI's API calls since the landing login."""
    calls = _api_calls(page, ui)
    for _ in range(3):
        # The landing page's first calls can race the SPA storing the new tokens (a 401 sends
        # it back to Dex): log in again then.
        calls.clear()
        logged_in(page, ui, "reader@example.com", ui.stack.reader_password)
        page.wait_for_timeout(3000)
        if not any(status == 401 for status, _, _ in calls):
            break
    return calls


def test_reader_lands_in_their_namespace_and_the_list_holds_only_it(page, ui):
    """A reader of `default` only, in the stock UI behind the gate: lands on default's workflows,
    and the namespace list the UI got (from the gate, asked of the frontend with the reader's
    token) holds default and nothing else."""
    calls = _reader_logged_in(page, ui)
    assert NOT_ALLOWED not in page.url and page.url.startswith(f"{ui.url}/namespaces/default/workflows"), (page.url, calls)
    listed = page.request.get(f"{ui.url}/api/v1/namespaces", headers={"Authorization": page.bearer["value"]})
    assert listed.status == 200
    assert [n["namespaceInfo"]["name"] for n in listed.json()["namespaces"]] == ["default"]
    refused = [c for c in calls if c[0] in (401, 403)]
    assert not refused, refused


def test_reader_in_the_ui_is_held_to_default_read(page, ui):
    """In the real UI the reader works in `default`: the workflow list and page, the input still
    ciphertext (the codec server answered 200 without decrypting), Terminate refused by the
    frontend (the workflow keeps running), and `orders` refused."""
    calls = _reader_logged_in(page, ui)
    assert page.url.startswith(f"{ui.url}/namespaces/default/workflows"), (page.url, calls)
    html, status = workflow_page(page, ui)
    assert status == 200 and ui.workflow_id in html
    assert ui.secret_input not in html, "the reader's UI showed the decrypted input"

    assert terminate_on_the_workflow_page(
        page, f"{ui.url}/api/v1/namespaces/default/workflows/{ui.workflow_id}/terminate", "a reader tries") == 403
    described = page.request.get(f"{ui.url}/api/v1/namespaces/default/workflows/{ui.workflow_id}",
                                 headers={"Authorization": page.bearer["value"]})
    assert described.json()["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"

    _goto(page, f"{ui.url}/namespaces/orders/workflows")
    page.wait_for_timeout(3000)
    orders = [(status, path) for status, _, path in calls if path.startswith("/api/v1/namespaces/orders")]
    # Whatever the UI called in `orders` was refused, and it showed none of orders' workflows.
    # The frontend's refusal of `orders` for this token:
    # test_reader_api_with_the_token_the_ui_sent_holds_only_default_read.
    assert all(status == 403 for status, _ in orders), orders
    assert not [c for c in calls if c[0] == 403 and "/namespaces/default" in c[2] and "/terminate" not in c[2]], calls


def test_reader_api_with_the_token_the_ui_sent_holds_only_default_read(page, ui):
    """The same limits at the API, with the Dex token the UI sent for the reader: the two cluster
    reads answered (by the gate), `orders` refused, default readable, Terminate refused, payloads
    back encrypted."""
    logged_in(page, ui, "reader@example.com", ui.stack.reader_password)
    assert page.bearer.get("value"), "the UI sent no token for the reader"
    assert api(page, ui, "GET", "/api/v1/cluster-info") == 200
    assert api(page, ui, "GET", "/api/v1/namespaces") == 200
    assert api(page, ui, "GET", "/api/v1/namespaces/orders") == 403
    assert api(page, ui, "GET", "/api/v1/namespaces/default/workflows") == 200
    assert api(page, ui, "GET", "/api/v1/namespaces/orders/workflows") == 403
    status = api(page, ui, "POST", f"/api/v1/namespaces/default/workflows/{ui.workflow_id}/terminate")
    assert status == 403, status
    history = page.request.get(f"{ui.url}/api/v1/namespaces/default/workflows/{ui.workflow_id}/history",
                               headers={"Authorization": page.bearer["value"]})
    assert history.status == 200 and ui.secret_input not in history.text()
    payloads = [e["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
                for e in history.json()["history"]["events"] if "workflowExecutionStartedEventAttributes" in e][0]
    decoded = page.request.post(ui.codec + "/decode", data=json.dumps({"payloads": payloads}),
                                headers={"Authorization": page.bearer["value"], "X-Namespace": "default",
                                         "Content-Type": "application/json"})
    assert decoded.status == 200
    assert ui.secret_input not in decoded.text() and ui.secret_input not in str(decoded.json())


def test_wrong_password_stays_on_the_login_page(page, ui):
    login(page, ui, "admin@example.com", ui.password + "-wrong")
    page.wait_for_load_state("networkidle")
    assert page.url.startswith(ui.dex + "/auth/local/login"), page.url
    assert page.locator("input[name=password]").count() == 1
    assert "refresh" not in {c["name"] for c in page.context.cookies(ui.url)}
    assert api(page, ui, "GET", "/api/v1/namespaces/default/workflows") == 401


def test_logout_button_ends_the_session(page, ui):
    """The UI's own Log out (user menu): it calls /auth/logout, which drops the UI server's
    session; the refresh cookie is gone, /auth/refresh issues nothing, a protected page sends the
    browser to the login page again, and Dex (no session of its own in v2.45.1) asks for the
    password again."""
    logged_in(page, ui, "admin@example.com", ui.password)
    assert page.request.get(ui.url + "/auth/refresh", max_redirects=0).status == 200

    def log_out():
        _goto(page, f"{ui.url}/namespaces/default/workflows")
        page.get_by_test_id("user-menu-trigger").click()
        with page.expect_response(lambda r: r.url.startswith(ui.url + "/auth/logout")) as logout:
            visible(page.get_by_role("menuitem", name="Log out")).click()
        return logout.value

    logout = retried(log_out, attempts=3, also=("Timeout",))
    assert logout.status in (200, 302, 303), logout.status
    page.wait_for_url(ui.url + "/**", wait_until="commit")
    assert "refresh" not in {c["name"] for c in page.context.cookies(ui.url)}
    refreshed = page.request.get(ui.url + "/auth/refresh", max_redirects=0)
    assert refreshed.status in (400, 401, 403), refreshed.status
    assert not any(c["name"].startswith("user") for c in page.context.cookies(ui.url))

    def sent_to_login():
        _goto(page, f"{ui.url}/namespaces/default/workflows")
        page.wait_for_url(re.compile(re.escape(ui.url) + r"/login\?returnUrl="), wait_until="commit")

    # A page whose first API call Docker's interface changes cut off shows the UI's error page
    # instead of redirecting: it is opened again (a session still alive never redirects at all).
    retried(sent_to_login, attempts=3, also=("Timeout",))

    def asked_for_the_password():
        _goto(page, ui.url + "/auth/sso")  # the redirect to Dex may overtake the first commit
        page.wait_for_url(re.compile(re.escape(ui.dex) + r"/auth/local/login"), wait_until="commit")

    retried(asked_for_the_password, attempts=3, also=("Timeout",))


def test_the_browser_never_received_a_key_or_the_client_secret(ui):
    assert len(ui.bodies) > 20, "the browser tests above must have run first"
    for url, body in ui.bodies:
        for name, secret in ui.secrets.items():
            assert secret not in body, f"{name} in the response of {url}"


def test_https_endpoints_verify_with_the_bundle_ca(ui, tmp_path):
    """What the browser skipped: the UI, Dex and the codec server present certificates that
    verify against the bundle's CA for the names the browser uses (auth.localhost resolves to
    loopback in browsers; here it is dialled on 127.0.0.1 with that name as SNI)."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ui.ca)
    context = ssl.create_default_context(cafile=str(ca))
    for name, port in (("localhost", ui.stack.ui_port), ("auth.localhost", ui.stack.oidc_port),
                       ("localhost", ui.stack.codec_port)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3"), (name, port)


def _foreign_ca_server(tmp_path: Path):
    """An HTTPS server on loopback for `localhost`, its certificate from a CA nobody trusts."""
    import datetime
    import http.server

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = tmp_path / "foreign.pem"
    pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
                    + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_browser_trusts_the_bundle_ca_and_refuses_a_foreign_one(page, ui, tmp_path):
    """No certificate error is ignored: the UI's page loads because the bundle's CA is in the
    browser's NSS database, and a server for the same name with a foreign CA's certificate is
    refused."""
    response = retried(lambda: page.goto(ui.url + "/healthz"))
    assert response.ok, response.status
    assert page.request.get(ui.url + "/healthz").ok
    server = _foreign_ca_server(tmp_path)
    try:
        port = server.server_address[1]
        with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
            retried(lambda: page.goto(f"https://localhost:{port}/"))
        with pytest.raises(Exception, match="certificate"):
            page.request.get(f"https://localhost:{port}/")
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- Dex tokens elsewhere


def _frontend_answer(ui, token: str) -> str:
    """ListNamespaces on the published frontend with the client role's mTLS cert and `token`."""
    import asyncio

    from temporalio.api.workflowservice.v1 import ListNamespacesRequest
    from temporalio.client import Client
    from temporalio.service import RPCError, TLSConfig

    files = ui.client_files

    async def call():
        try:
            # Connecting already calls GetSystemInfo, whose token the claim mapper checks.
            client = await Client.connect(
                f"127.0.0.1:{ui.stack.frontend_port}", api_key=token,
                tls=TLSConfig(server_root_ca_cert=files["trust/ca.pem"], client_cert=files["clients/client.pem"],
                              client_private_key=files["clients/client.key"], domain="temporal"),
            )
            await client.workflow_service.list_namespaces(ListNamespacesRequest())
            return "ok"
        except RPCError as exc:
            return f"denied: {exc.message}"
        except RuntimeError as exc:  # the SDK's connect wraps the refusal
            if "PermissionDenied" not in str(exc):
                raise
            return f"denied: {exc}"

    # Playwright's sync API owns this thread's event loop: the SDK runs on another thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, call()).result(timeout=60)


def _codec_status(page, ui, token: str) -> int:
    body = json.dumps({"payloads": []})
    return page.request.post(ui.codec + "/decode", data=body, headers={
        "Authorization": f"Bearer {token}", "X-Namespace": "default", "Content-Type": "application/json"}).status


def _foreign(claims: dict, kid: str) -> str:
    """The same claims signed by a key nobody trusts, under `kid`."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_dex_tokens_at_the_frontend_and_the_codec_server(page, ui):
    """A real Dex token (what the UI sent) works at the frontend and the codec server; a token
    from a foreign issuer, one claiming Dex's kid for another audience, and the same Dex token
    once expired are refused by both; the role tokens still work."""
    import jwt

    ui.client_files = ui.stack.read_bundle_files("trust/ca.pem", "clients/client.pem", "clients/client.key",
                                                 "tokens/system.jwt")
    logged_in(page, ui, "admin@example.com", ui.password)
    token = page.bearer["value"].removeprefix("Bearer ")
    header, claims = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == ui.dex and claims["aud"] == "temporal" and header["alg"] == "RS256"
    assert claims["groups"] == ["temporal-system:admin"]
    assert _frontend_answer(ui, token) == "ok"
    assert _codec_status(page, ui, token) == 200

    foreign_issuer = _foreign({**claims, "iss": "https://evil.example/dex"}, "foreign-kid")
    other_audience = _foreign({**claims, "aud": "another-app"}, header["kid"])
    for name, forged in (("foreign issuer", foreign_issuer), ("Dex kid, other audience", other_audience)):
        assert _frontend_answer(ui, forged).startswith("denied"), name
        assert _codec_status(page, ui, forged) == 401, name

    system = ui.client_files["tokens/system.jwt"].decode().strip()
    assert _frontend_answer(ui, system) == "ok", "a role token stopped working"
    assert _codec_status(page, ui, system) == 200

    # The test stack gives Dex tokens a short life (oidc.token_lifetime): wait it out.
    import time

    time.sleep(max(0, claims["exp"] - time.time() + 2))
    assert _frontend_answer(ui, token).startswith("denied"), "an expired Dex token was accepted"
    assert _codec_status(page, ui, token) == 401


def test_a_dex_restart_logs_nobody_out(page, ui):
    """Dex keeps its state in SQLite on the dex-data volume: after `docker compose restart dex`
    the UI server still redeems the session's refresh token at Dex (/auth/refresh), and Dex's
    JWKS still holds the key that signed the token issued before the restart."""
    import jwt

    logged_in(page, ui, "admin@example.com", ui.password)
    kid = jwt.get_unverified_header(page.bearer["value"].removeprefix("Bearer "))["kid"]
    assert page.request.get(ui.url + "/auth/refresh", max_redirects=0).status == 200
    ui.stack.compose("restart", "dex", timeout=180)
    import time

    # The browser, not page.request: only chromium resolves auth.localhost to loopback.
    deadline, keys = time.monotonic() + 120, None
    while keys is None:
        try:
            response = page.goto(ui.dex + "/keys", timeout=5000)
            keys = response.json()["keys"] if response and response.ok else None
        except Exception:  # Dex is not listening yet
            pass
        assert keys is not None or time.monotonic() < deadline, "Dex did not come back after its restart"
        time.sleep(0 if keys else 1)
    assert kid in {key["kid"] for key in keys}
    refreshed = page.request.get(ui.url + "/auth/refresh", max_redirects=0)
    assert refreshed.status == 200, refreshed.status
    assert "refresh" in {c["name"] for c in page.context.cookies(ui.url)}
