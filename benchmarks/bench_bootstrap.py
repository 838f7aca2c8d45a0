"""How long a full bootstrap takes, next to a plain openssl-CLI shell script doing the same
certificates, from one run.

    python benchmarks/bench_bootstrap.py [--runs 5] [--config bundle.yaml]

Measured, each into a fresh temporary directory, --runs times (median and min reported):
  init, in-process       temporal-bundle init via bootstrap.cli.main(): CA, every leaf cert, JWT
                         signing key, jwks.json, role tokens, rendered server config
  generate-certs, in-p.  only the PKI part of that (CA, leaves, signing key, jwks.json)
  init, subprocess       `python -m bootstrap init`, as compose runs it (interpreter start included)
  openssl shell baseline one bash script: an EC P-256 CA, then for every leaf `openssl req` + `openssl
                         x509 -req -extfile` with the same SANs and EKUs, then the JWT key with
                         `openssl genpkey` (no JWKS, tokens or config: it does less than init)

Then both key backends side by side (keys.backend file vs pkcs11 on a SoftHSM2 token in a temp
SOFTHSM2_CONF), each as the CLI runs (`python -m bootstrap`, a subprocess), --runs times:
  init                   fresh directory; under pkcs11 four CA keys + the signing key + the KEK are
                         generated in the token and every certificate and token is signed there
  rotate certs --all     every leaf re-issued (each signed by its domain's CA key)
  rotate signing-key     phase 1: a new signing key, published in jwks.json
  rotate ca              phase 1: four new CAs, trusted beside the old
  rotate codec-key       every namespace's data key ring gets a new key (re-wrapped by the KEK)
Each rotation runs on a fresh copy of one initialised bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bootstrap.cli import main  # noqa: E402
from bootstrap.core.config import load_config  # noqa: E402
from bootstrap.ops.plan import leaf_specs  # noqa: E402

DEFAULT_CONFIG = "namespaces: [{name: default}, {name: other}]\n"
EKU_NAMES = {"server": "serverAuth", "client": "clientAuth", "both": "serverAuth,clientAuth"}
CURVE = "-pkeyopt ec_paramgen_curve:P-256"


def _san_entry(san: str) -> str:
    return f"IP:{san}" if san.replace(".", "").isdigit() or ":" in san else f"DNS:{san}"


def openssl_script(config_path: Path) -> str:
    """A bash script issuing what `init` issues, the way a hand-written bootstrap.sh would."""
    config = load_config(config_path)
    org = config.pki.organization
    ca_days = config.pki.ca_lifetime.days
    leaf_days = config.pki.leaf_lifetime.days
    lines = [
        "set -euo pipefail",
        'out="$1"; mkdir -p "$out/private/jwt" "$out/trust"; chmod 700 "$out/private"',
        f'openssl req -x509 -newkey ec {CURVE} -nodes -keyout "$out/private/ca.key" -out "$out/private/ca.pem" '
        f"-days {ca_days} -sha256 -subj {shlex.quote(f'/O={org}/CN={config.pki.ca_common_name}')} "
        "-addext 'basicConstraints=critical,CA:TRUE,pathlen:0' "
        "-addext 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' "
        "-addext 'subjectKeyIdentifier=hash' 2>/dev/null",
        'chmod 400 "$out/private/ca.key"',
        'cp "$out/private/ca.pem" "$out/trust/ca.pem"',
    ]
    for spec in leaf_specs(config):
        base = f'"$out/{spec.directory}/{spec.name}'
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={EKU_NAMES[spec.usage]}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        if spec.sans:
            ext.append("subjectAltName=" + ",".join(_san_entry(s) for s in spec.sans))
        ext_text = "\\n".join(ext)
        subject = shlex.quote(f"/O={org}/CN={spec.common_name}")
        lines += [
            f'mkdir -p "$out/{spec.directory}"',
            f'printf "{ext_text}\\n" > {base}.ext"',
            f"openssl req -new -newkey ec {CURVE} -nodes -keyout {base}.key\" -out {base}.csr\" -subj {subject} 2>/dev/null",
            f"openssl x509 -req -in {base}.csr\" -CA \"$out/private/ca.pem\" -CAkey \"$out/private/ca.key\" "
            f"-set_serial 0x{secrets.token_hex(16)} -days {leaf_days} -sha256 -extfile {base}.ext\" "
            f"-out {base}.pem\" 2>/dev/null",
            f'chmod 600 {base}.key"; chmod 644 {base}.pem"; rm -f {base}.csr" {base}.ext"',
        ]
    lines += [
        f'openssl genpkey -algorithm EC {CURVE} -out "$out/private/jwt/signing.key"',
        'chmod 600 "$out/private/jwt/signing.key"',
    ]
    return "\n".join(lines) + "\n"


def timed(runs: int, action) -> list[float]:
    """Milliseconds per run; each run gets a fresh empty output directory path."""
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run-{i}"
            start = time.perf_counter()
            action(out)
            times.append((time.perf_counter() - start) * 1000)
    return times


def in_process(command: str, config: Path):
    def run(out: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            code = main([command, "--config", str(config), "--out", str(out)])
        if code != 0:
            raise SystemExit(f"{command} failed with exit {code}")

    return run


def as_subprocess(config: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(out: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "bootstrap", "init", "--config", str(config), "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )

    return run


def shell(script: Path):
    def run(out: Path) -> None:
        subprocess.run(["bash", str(script), str(out)], check=True)

    return run


def check_baseline(script: Path, config: Path) -> int:
    """Run the baseline once and prove its certificates verify, so the comparison is fair."""
    specs = leaf_specs(load_config(config))
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        out = Path(tmp) / "out"
        shell(script)(out)
        for spec in specs:
            purpose = "sslclient" if spec.usage == "client" else "sslserver"
            result = subprocess.run(
                ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(out / "trust" / "ca.pem"),
                 str(out / spec.directory / f"{spec.name}.pem")],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise SystemExit(f"baseline certificate {spec.directory}/{spec.name} does not verify: {result.stdout}{result.stderr}")
    return len(specs)


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (default: 5)")
    parser.add_argument("--config", type=Path, help="bundle config (default: two namespaces, postgres, default roles)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-config-") as tmp:
        config = args.config.resolve() if args.config else Path(tmp) / "bundle.yaml"
        if not args.config:
            config.write_text(DEFAULT_CONFIG)
        script = Path(tmp) / "openssl-bootstrap.sh"
        script.write_text(openssl_script(config))
        leaves = check_baseline(script, config)

        in_process("init", config)(Path(tmp) / "warm-up")  # imports and first-use costs out of the figures
        variants = [
            ("init, in-process (main)", timed(args.runs, in_process("init", config))),
            ("generate-certs, in-process", timed(args.runs, in_process("generate-certs", config))),
            ("init, subprocess (python -m)", timed(args.runs, as_subprocess(config))),
            ("openssl CLI shell baseline", timed(args.runs, shell(script))),
        ]

    baseline = statistics.median(variants[-1][1])
    print(f"bootstrap of 1 CA + {leaves} leaf certs (EC P-256) + JWT key; {args.runs} runs each, fresh directory per run")
    print(f"{'variant':<32}{'median ms':>11}{'min ms':>10}{'vs openssl':>12}")
    for name, times in variants:
        median = statistics.median(times)
        print(f"{name:<32}{median:>11.1f}{min(times):>10.1f}{median / baseline:>11.2f}x")
    print("(init also writes jwks.json, role tokens and the rendered server config; the baseline does not)")
    print()
    compare_backends(args.runs)
    return 0


SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
ROTATIONS = (("rotate certs --all", ("certs", "--all")), ("rotate signing-key", ("signing-key",)),
             ("rotate ca (phase 1)", ("ca",)), ("rotate codec-key", ("codec-key",)))


def softhsm_token(tmp: Path) -> tuple[dict, dict]:
    """A fresh SoftHSM2 token: the environment the CLI needs and the bundle.yaml keys section."""
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        raise SystemExit("softhsm2 is not installed (scripts/install-deps.sh installs it)")
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(REPO)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"],
                   env=env, check=True, capture_output=True)
    (tmp / "pin").write_text("1234")
    keys = {"backend": "pkcs11", "pkcs11": {"module": module, "token_label": "bench", "pin_file": str(tmp / "pin")}}
    return env, keys


def cli(env: dict, *args) -> None:
    subprocess.run([sys.executable, "-m", "bootstrap", *map(str, args)], env=env, check=True, stdout=subprocess.DEVNULL)


def backend_times(runs: int, tmp: Path, name: str, env: dict, keys_yaml: str) -> dict[str, list[float]]:
    config = tmp / f"{name}.yaml"
    config.write_text(DEFAULT_CONFIG + keys_yaml)
    times = {"init": timed(runs, lambda out: cli(env, "init", "--config", config, "--out", out))}
    base = tmp / f"{name}-base"
    cli(env, "init", "--config", config, "--out", base)
    for label, kind in ROTATIONS:
        times[label] = []
        for i in range(runs):
            work = tmp / f"{name}-{kind[0]}-{i}"
            shutil.copytree(base, work, symlinks=True)
            start = time.perf_counter()
            cli(env, "rotate", "--config", config, "--out", work, "--kind", *kind)
            times[label].append((time.perf_counter() - start) * 1000)
    return times


def compare_backends(runs: int) -> None:
    import json as _json

    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        tmp = Path(tmp)
        env, keys = softhsm_token(tmp)
        file_times = backend_times(runs, tmp, "file", env, "")
        token_times = backend_times(runs, tmp, "pkcs11", env, "keys: " + _json.dumps(keys) + "\n")
    print(f"key backends, as the CLI runs (subprocess, interpreter start included); {runs} runs each, median ms")
    print(f"{'operation':<24}{'file':>10}{'pkcs11':>10}{'ratio':>9}")
    for label in file_times:
        f, t = statistics.median(file_times[label]), statistics.median(token_times[label])
        print(f"{label:<24}{f:>10.0f}{t:>10.0f}{t / f:>8.2f}x")
    print("(pkcs11: SoftHSM2, a software token; a hardware HSM signs slower per operation)")


if __name__ == "__main__":
    sys.exit(main_bench())
