"""check-expiry: every exit code, the table, --json, --prometheus, and the JWKS check against a
real local HTTPS JWKS server."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from bootstrap.cli import main
from bootstrap.errors import BundleError
from bootstrap.ops.expiry import Thresholds, check
from bootstrap.servers.jwks import make_server
from bootstrap.core.pki import CA, utcnow
from bootstrap.core.tokens import SigningKey, mint_token
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = "namespaces: [{name: default}]\npersistence: {driver: sqlite, sqlite_path: /tmp/unused-check-expiry.db}\n"
DEFAULTS = Thresholds(timedelta(days=7), timedelta(days=1))
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>-?\d+(\.\d+)?)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


# --- building inputs -------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path, capsys) -> Path:
    """A bundle exactly as `init` writes it."""
    config, out = tmp_path / "bundle.yaml", tmp_path / "bundle"
    config.write_text(CONFIG)
    assert main(["init", "--config", str(config), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def ca() -> CA:
    return CA.create(lifetime=timedelta(days=3650))


def write_cert(directory: Path, name: str, ca: CA, *, lifetime: timedelta, age: timedelta = timedelta(0)) -> Path:
    leaf = ca.issue_cert(name, lifetime=lifetime, now=utcnow() - age)
    path = directory / f"{name}.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(leaf.cert_pem())
    return path


def write_token(path: Path, *, lifetime: timedelta, age: timedelta = timedelta(0), key: SigningKey | None = None) -> str:
    token = mint_token(
        key or SigningKey.generate(),
        role="worker",
        permissions=["default:write", "default:read"],
        issuer="test",
        audience="test",
        lifetime=lifetime,
        now=utcnow() - age,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token.encoded + "\n")
    return token.encoded


def run_check(*args: str) -> int:
    return main(["check-expiry", *map(str, args)])


def json_report(capsys, *args: str) -> tuple[int, dict]:
    code = run_check(*args, "--json")
    return code, json.loads(capsys.readouterr().out)


def rows_by_name(document: dict) -> dict:
    return {item["name"]: item for item in document["items"]}


def table_row(output: str, name: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.startswith(name + " "))


# --- exit 0 and the table --------------------------------------------------------------------


def test_fresh_bundle_is_ok_with_one_row_per_cert_and_token(bundle, capsys):
    assert run_check("--out", bundle) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "SUBJECT", "KID", "PERMISSIONS", "NOT-AFTER", "LEFT", "STATUS", "NOTE"]
    kid = (bundle / "private" / "jwt" / "active").read_text().strip()
    system = table_row(out, "tokens/system.jwt")
    assert system[1:5] == ["token", "temporal-bundle:system", kid, "temporal-system:admin"]
    assert system[-1] == "ok"
    assert table_row(out, "trust/ca.pem")[:2] == ["trust/ca.pem", "ca"]
    assert table_row(out, "server/frontend.pem")[1] == "cert"
    assert "summary:" in out.splitlines()[-1] and "0 unreadable" in out


def test_directory_defaults_to_bundle_dir_env(bundle, capsys, monkeypatch):
    monkeypatch.setenv("BUNDLE_DIR", str(bundle))
    assert run_check() == 0
    assert "tokens/worker.jwt" in capsys.readouterr().out


def test_reads_only_certs_and_tokens_never_private_keys_or_dotfiles(bundle, capsys):
    (bundle / "private" / "garbage.pem").write_text("not a cert")
    (bundle / "server" / "garbage.key").write_text("not a key")
    (bundle / "tokens" / ".garbage.jwt.123.tmp.jwt").write_text("half-written")
    code, document = json_report(capsys, "--out", bundle)
    names = set(rows_by_name(document))
    assert code == 0
    # Every trust domain's CA certificate, and nothing else from private/.
    cas = {"private/ca.pem", "private/ca-client.pem", "private/ca-internode.pem", "private/ca-database.pem"}
    assert cas <= names
    assert not [n for n in names if n.startswith("private/") and n not in cas]
    assert {"trust/client/ca.pem", "trust/internode/ca.pem", "trust/database/ca.pem"} <= names
    assert not [n for n in names if n.endswith(".key") or "/." in n]


def test_not_after_is_utc_iso_and_time_left_is_human(tmp_path, ca, capsys):
    write_cert(tmp_path, "svc", ca, lifetime=timedelta(days=30))
    assert run_check(tmp_path) == 0
    row = table_row(capsys.readouterr().out, "svc.pem")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[5])
    assert row[6] == "29d23h"


def test_every_cert_of_a_multi_cert_bundle_is_a_row(tmp_path, ca, capsys):
    other = CA.create("Next CA", lifetime=timedelta(days=100))
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "ca.pem").write_bytes(ca.cert_pem() + other.cert_pem())
    code, document = json_report(capsys, tmp_path)
    rows = rows_by_name(document)
    assert code == 0
    assert rows["trust/ca.pem#1"]["subject"] == "Temporal Bundle CA"
    assert rows["trust/ca.pem#2"]["subject"] == "Next CA"
    assert {r["kind"] for r in rows.values()} == {"ca"}


# --- exit 1 and 2 ----------------------------------------------------------------------------


def test_cert_inside_warn_threshold_is_exit_1(tmp_path, ca, capsys):
    write_cert(tmp_path, "svc", ca, lifetime=timedelta(days=90), age=timedelta(days=87))
    assert run_check(tmp_path) == 1
    assert table_row(capsys.readouterr().out, "svc.pem")[7] == "warning"


def test_expired_cert_is_exit_2_with_negative_time_left(tmp_path, ca, capsys):
    write_cert(tmp_path, "old", ca, lifetime=timedelta(days=5), age=timedelta(days=10))
    write_cert(tmp_path, "new", ca, lifetime=timedelta(days=90))
    code, document = json_report(capsys, tmp_path)
    old = rows_by_name(document)["old.pem"]
    assert code == 2
    assert old["status"] == "expired"
    assert old["seconds_left"] < 0 and old["time_left"] in ("-5d0h", "-4d23h")


def test_token_near_expiry_is_exit_2(tmp_path, capsys):
    write_token(tmp_path / "tokens" / "worker.jwt", lifetime=timedelta(hours=1), age=timedelta(minutes=58))
    assert run_check(tmp_path) == 2
    assert table_row(capsys.readouterr().out, "tokens/worker.jwt")[7] == "critical"


def test_fresh_short_lived_token_is_judged_by_its_own_lifetime(tmp_path, capsys):
    write_token(tmp_path / "fresh.jwt", lifetime=timedelta(hours=1))
    write_token(tmp_path / "past-refresh.jwt", lifetime=timedelta(hours=1), age=timedelta(minutes=45))
    code, document = json_report(capsys, tmp_path)
    rows = rows_by_name(document)
    assert code == 1
    assert rows["fresh.jwt"]["status"] == "ok"
    assert rows["past-refresh.jwt"]["status"] == "warning"


def test_thresholds_are_options(tmp_path, ca, capsys):
    write_cert(tmp_path, "svc", ca, lifetime=timedelta(days=90), age=timedelta(days=87))
    assert run_check(tmp_path, "--warn", "2d", "--crit", "1d") == 0
    assert run_check(tmp_path, "--warn", "5d", "--crit", "4d") == 2


# --- exit 3 ----------------------------------------------------------------------------------


def test_garbage_pem_is_an_unreadable_row_and_exit_3_wins_over_expired(tmp_path, ca, capsys):
    write_cert(tmp_path, "old", ca, lifetime=timedelta(days=1), age=timedelta(days=2))
    (tmp_path / "garbage.pem").write_bytes(b"\x00\xffnot a certificate at all")
    assert run_check(tmp_path) == 3
    out = capsys.readouterr().out
    assert table_row(out, "garbage.pem")[2:] == ["-", "-", "-", "-", "-", "unreadable", "not", "a", "readable", "PEM", "certificate"]
    assert table_row(out, "old.pem")[7] == "expired"


@pytest.mark.parametrize("cut", ["half", "signature"])
def test_truncated_token_is_unreadable_exit_3(tmp_path, capsys, cut):
    encoded = write_token(tmp_path / "t.jwt", lifetime=timedelta(hours=24))
    (tmp_path / "t.jwt").write_text(encoded[: len(encoded) // 2] if cut == "half" else encoded[:-3])
    code, document = json_report(capsys, tmp_path)
    assert code == 3
    assert rows_by_name(document)["t.jwt"]["status"] == "unreadable"


def test_token_without_exp_is_unreadable(tmp_path, capsys):
    import jwt

    key = SigningKey.generate()
    (tmp_path / "t.jwt").write_text(jwt.encode({"sub": "x"}, key.private_key, algorithm="ES256", headers={"kid": key.kid}))
    code, document = json_report(capsys, tmp_path)
    assert code == 3
    assert rows_by_name(document)["t.jwt"]["notes"] == ["token has no numeric exp claim"]


NASTY_TOKENS = [
    b"",
    b"a.b.c",
    b"\xff\xfe\x00garbage",
    b"eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjFlMzAwfQ." + b"A" * 86,  # exp 1e300: out of range
    b"WzFd.WzJd.eA",  # header and payload are JSON arrays
]


@pytest.mark.parametrize("data", NASTY_TOKENS)
def test_garbage_tokens_never_crash(tmp_path, capsys, data):
    (tmp_path / "t.jwt").write_bytes(data)
    assert run_check(tmp_path) == 3
    assert table_row(capsys.readouterr().out, "t.jwt")[7] == "unreadable"


def test_token_without_permissions_or_kid_still_reports_its_expiry(tmp_path, capsys):
    import jwt

    now = int(utcnow().timestamp())
    claims = {"sub": "two\nlines", "exp": now + 30 * 86400, "iat": now}
    (tmp_path / "t.jwt").write_text(jwt.encode(claims, SigningKey.generate().private_key, algorithm="ES256"))
    assert run_check(tmp_path) == 0
    row = table_row(capsys.readouterr().out, "t.jwt")
    assert row[1:5] == ["token", "two", "lines", "-"] and row[5] == "-"


def test_missing_directory_is_one_error_line_and_exit_3(tmp_path, capsys):
    assert run_check(tmp_path / "missing") == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert "does not exist" in captured.err


def test_empty_directory_is_exit_3(tmp_path, capsys):
    assert run_check(tmp_path) == 3
    assert capsys.readouterr().err.startswith("error: no certificates")


@pytest.mark.parametrize("warn,crit", [("1d", "2d"), ("soon", "1d"), ("7d", "0s")])
def test_invalid_thresholds_are_exit_3(bundle, capsys, warn, crit):
    assert run_check(bundle, "--warn", warn, "--crit", crit) == 3
    assert capsys.readouterr().err.startswith("error: --")


def test_unreachable_jwks_url_is_exit_3(bundle, capsys):
    url = f"https://127.0.0.1:{free_port()}/jwks.json"
    code, document = json_report(capsys, bundle, "--jwks-url", url, "--timeout", "5s")
    assert code == 3
    assert document["jwks"]["url"] == url and document["jwks"]["error"]
    assert document["counts"]["unreadable"] == 0  # the files are fine; the JWKS is what failed


def test_stalled_jwks_url_times_out_with_exit_3(bundle, capsys):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        assert run_check(bundle, "--jwks-url", url, "--timeout", "1s") == 3
    assert "timed out" in capsys.readouterr().err


# --- the JWKS check against a real HTTPS JWKS server -----------------------------------------


@pytest.fixture
def jwks_server(bundle):
    server = make_server(
        "127.0.0.1", 0, bundle / "jwks" / "jwks.json", bundle / "jwks" / "server.pem", bundle / "jwks" / "server.key"
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_token_signed_by_an_unpublished_key_is_critical(bundle, jwks_server, capsys):
    write_token(bundle / "tokens" / "rogue.jwt", lifetime=timedelta(hours=24))
    code, document = json_report(capsys, bundle, "--jwks-url", f"{jwks_server}/jwks.json")
    rows = rows_by_name(document)
    active = (bundle / "private" / "jwt" / "active").read_text().strip()
    assert code == 2
    assert document["jwks"] == {"url": f"{jwks_server}/jwks.json", "kids": [active], "error": None}
    assert rows["tokens/rogue.jwt"]["status"] == "critical"
    assert "not published" in rows["tokens/rogue.jwt"]["notes"][0]
    assert {rows[f"tokens/{r}.jwt"]["status"] for r in ("system", "worker", "client")} == {"ok"}


def test_token_with_a_published_kid_but_a_foreign_signature_is_critical(bundle, jwks_server, capsys):
    import jwt

    active = (bundle / "private" / "jwt" / "active").read_text().strip()
    claims = {"sub": "forged", "exp": int(utcnow().timestamp()) + 86400, "iat": int(utcnow().timestamp())}
    forged = jwt.encode(claims, SigningKey.generate().private_key, algorithm="ES256", headers={"kid": active})
    (bundle / "tokens" / "forged.jwt").write_text(forged)
    code, document = json_report(capsys, bundle, "--jwks-url", f"{jwks_server}/jwks.json")
    assert code == 2
    assert "signature does not verify" in rows_by_name(document)["tokens/forged.jwt"]["notes"][0]


def test_jwks_kids_are_listed_in_the_table(bundle, jwks_server, capsys):
    assert run_check(bundle, "--jwks-url", f"{jwks_server}/jwks.json") == 0
    active = (bundle / "private" / "jwt" / "active").read_text().strip()
    assert f"published kids: {active}" in capsys.readouterr().out


def test_jwks_url_that_is_not_a_jwks_is_exit_3(bundle, jwks_server, capsys):
    assert run_check(bundle, "--jwks-url", f"{jwks_server}/nothing-here") == 3
    assert "HTTP 404" in capsys.readouterr().err


def test_jwks_server_not_trusted_by_the_ca_file_is_exit_3(bundle, jwks_server, ca, tmp_path, capsys):
    (tmp_path / "other-ca.pem").write_bytes(ca.cert_pem())
    url = f"{jwks_server}/jwks.json"
    assert run_check(bundle, "--jwks-url", url, "--ca-file", tmp_path / "other-ca.pem") == 3
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


# --- --json and --prometheus -----------------------------------------------------------------


def test_json_document_structure(bundle, capsys):
    code, document = json_report(capsys, bundle)
    assert code == 0
    assert set(document) == {"directory", "checked_at", "thresholds", "status", "exit_code", "error", "counts", "items", "jwks"}
    assert document["thresholds"] == {"warn_seconds": 7 * 86400, "crit_seconds": 86400}
    assert document["status"] == "ok" and document["exit_code"] == 0 and document["jwks"] is None
    assert document["counts"]["ok"] == len(document["items"])
    token = rows_by_name(document)["tokens/worker.jwt"]
    assert set(token) == {"name", "kind", "subject", "kid", "permissions", "not_after", "seconds_left", "time_left", "status", "notes"}
    assert token["kind"] == "token" and token["permissions"] == ["default:write"]
    assert 0 < token["seconds_left"] <= 86400


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        labels = dict((k, v) for k, v, _ in LABEL.findall(match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def test_prometheus_file_parses(tmp_path, ca, capsys):
    write_cert(tmp_path / "b", "old", ca, lifetime=timedelta(days=1), age=timedelta(days=2))
    write_token(tmp_path / "b" / "t.jwt", lifetime=timedelta(hours=24))
    (tmp_path / "b" / "garbage.pem").write_text("garbage")
    prom = tmp_path / "metrics" / "bundle.prom"
    assert run_check(tmp_path / "b", "--prometheus", prom) == 3
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    samples = parse_prometheus(prom.read_text())
    values = {(name, labels.get("name", labels.get("status"))): value for name, labels, value in samples}
    assert values[("temporal_bundle_expiry_seconds", "old.pem")] < 0
    assert 0 < values[("temporal_bundle_expiry_seconds", "t.jwt")] <= 86400
    assert ("temporal_bundle_expiry_seconds", "garbage.pem") not in values
    assert values[("temporal_bundle_item_status", "old.pem")] == 2
    assert values[("temporal_bundle_item_status", "garbage.pem")] == 3
    assert values[("temporal_bundle_items", "unreadable")] == 1
    assert values[("temporal_bundle_check_status", None)] == 3
    assert abs(values[("temporal_bundle_check_timestamp_seconds", None)] - utcnow().timestamp()) < 60


def test_prometheus_labels_are_escaped(tmp_path, ca, capsys):
    leaf = ca.issue_cert(common_name='odd "name" \\ here', lifetime=timedelta(days=90))
    (tmp_path / "odd.pem").write_bytes(leaf.cert_pem())
    prom = tmp_path / "out.prom"
    assert run_check(tmp_path, "--prometheus", prom) == 0
    subjects = {labels.get("subject") for _, labels, _ in parse_prometheus(prom.read_text())}
    assert r'odd \"name\" \\ here' in subjects


def test_prometheus_file_records_a_failed_check(tmp_path, capsys):
    prom = tmp_path / "out.prom"
    assert run_check(tmp_path / "missing", "--prometheus", prom) == 3
    values = {name: value for name, _, value in parse_prometheus(prom.read_text())}
    assert values["temporal_bundle_check_status"] == 3


def test_prometheus_includes_jwks_gauges(bundle, tmp_path, capsys):
    prom = tmp_path / "out.prom"
    run_check(bundle, "--jwks-url", f"https://127.0.0.1:{free_port()}/jwks.json", "--prometheus", prom)
    values = {name: value for name, _, value in parse_prometheus(prom.read_text())}
    assert values["temporal_bundle_jwks_up"] == 0 and values["temporal_bundle_check_status"] == 3


# --- the pure layer --------------------------------------------------------------------------


def test_check_is_pure_in_now(tmp_path, ca):
    write_cert(tmp_path, "svc", ca, lifetime=timedelta(days=90))
    statuses = {
        days: check(tmp_path, utcnow() + timedelta(days=days), DEFAULTS).findings[0].status
        for days in (0, 85, 89.5, 91)
    }
    assert statuses == {0: "ok", 85: "warning", 89.5: "critical", 91: "expired"}


def test_check_reports_a_missing_directory_as_an_error(tmp_path):
    report = check(tmp_path / "missing", utcnow(), DEFAULTS)
    assert report.error and report.worst == "unreadable" and report.findings == ()


def test_crit_longer_than_warn_is_refused():
    with pytest.raises(BundleError):
        Thresholds(timedelta(days=1), timedelta(days=2))


# --- the installed entry point ---------------------------------------------------------------


def test_help_documents_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "bootstrap", "check-expiry", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for line in ("exit codes", "0  every certificate and token is ok", "1  at least one warning",
                 "2  at least one critical or expired", "3  unreadable input", "temporal_bundle_expiry_seconds"):
        assert line in result.stdout


def test_usage_errors_exit_3_not_2_which_means_critical(tmp_path):
    import subprocess
    import sys

    for argv in (["--bogus"], ["--warn"]):
        result = subprocess.run([sys.executable, "-m", "bootstrap", "check-expiry", *argv], capture_output=True, text=True)
        assert result.returncode == 3, (argv, result.stderr)
