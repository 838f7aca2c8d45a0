"""The command line: one parser, `main()` returning exit codes, console-script aliases, and one
subprocess smoke test of the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bootstrap
from bootstrap import cli
from bootstrap.commands import COMMANDS

REPO = Path(__file__).resolve().parents[2]
ALIASES = ["generate-certs", "mint-tokens", "render-config", "serve-jwks", "register-namespaces", "check-expiry", "rotate"]


def project_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_help_of_every_command_via_python_m_bootstrap():
    """Subprocess smoke test: `python -m bootstrap --help` and `<command> --help` all exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argvs = [["--help"], ["--version"]] + [[name, "--help"] for name in COMMANDS]
    procs = [
        (argv, subprocess.Popen([sys.executable, "-m", "bootstrap", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
        for argv in argvs
    ]
    for argv, proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (argv, stderr)
        assert stderr == "", (argv, stderr)
        if argv == ["--help"]:
            for name in COMMANDS:
                assert name in stdout
        elif argv == ["--version"]:
            assert bootstrap.__version__ in stdout
        else:
            assert stdout.startswith("usage: "), argv


def _imported_by(code: str) -> list[str]:
    """The bootstrap and third-party modules a fresh interpreter has loaded after code."""
    probe = code + "\nimport sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True).stdout
    return out.split()


def test_a_command_loads_its_own_module_only():
    """Each container runs one command: it must not pay for every other command's imports."""
    loaded = _imported_by("from bootstrap.cli import build_parser; build_parser(['register-namespaces', '--help'])")
    assert [m for m in loaded if m.startswith("bootstrap.commands.")] == [
        "bootstrap.commands.common", "bootstrap.commands.register_namespaces"]
    everything = _imported_by("from bootstrap.cli import build_parser; build_parser(['--help'])")
    assert {f"bootstrap.commands.{module}" for module in COMMANDS.values()} <= set(everything)


def test_reading_the_config_loads_no_jwt_library():
    assert "jwt" not in _imported_by("import bootstrap.core.config")


def test_expected_commands_exist():
    assert {"init", "generate-certs", "mint-tokens", "render-config", "serve-jwks", "register-namespaces", "check-expiry", "rotate"} <= set(COMMANDS)


@pytest.mark.parametrize("name", ALIASES)
def test_console_script_aliases_exist(name):
    alias = getattr(cli, name.replace("-", "_"))
    assert callable(alias)
    assert alias.__name__ == name.replace("-", "_")


def test_pyproject_scripts_resolve_to_callables():
    scripts = project_scripts()
    assert scripts["temporal-bundle"] == "bootstrap.cli:run_and_exit"
    for name in ALIASES:
        assert scripts[name] == f"bootstrap.cli:{name.replace('-', '_')}"
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        assert module == "bootstrap.cli" and callable(getattr(cli, attribute)), target


def test_alias_runs_its_command(monkeypatch, tmp_path, config_file, capsys):
    """`generate-certs --config X --out Y` is `temporal-bundle generate-certs ...`; exit via os._exit."""
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["generate-certs", "--config", str(config_file), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        cli.generate_certs()
    assert exits == [0]
    assert "wrote private/ca.pem: created" in capsys.readouterr().out
    assert (tmp_path / "out" / "private" / "ca.key").exists()


def test_alias_exit_code_of_an_error(monkeypatch, tmp_path, capsys):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["mint-tokens", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        cli.mint_tokens()
    assert exits == [1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read config")


def test_main_returns_exit_codes_in_process(tmp_path, config_file, cli):
    ok = cli("init", "--config", config_file, "--out", tmp_path / "out")
    assert ok.code == 0 and ok.err == ""
    assert cli("init", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "out").code == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["init", "--no-such-option"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_in_process(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: temporal-bundle " + name)


def test_config_and_out_default_from_the_environment(monkeypatch, tmp_path, config_file, cli):
    monkeypatch.setenv("BUNDLE_CONFIG", str(config_file))
    monkeypatch.setenv("BUNDLE_DIR", str(tmp_path / "from-env"))
    result = cli("generate-certs")
    assert result.code == 0, result.err
    assert (tmp_path / "from-env" / "private" / "ca.pem").exists()


def test_defaults_are_relative_to_the_working_directory(monkeypatch, tmp_path, small_config_text, cli):
    monkeypatch.delenv("BUNDLE_CONFIG", raising=False)
    monkeypatch.delenv("BUNDLE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundle.yaml").write_text(small_config_text)
    assert cli("generate-certs").code == 0
    assert (tmp_path / "certs" / "trust" / "ca.pem").exists()


def test_owner_option_is_validated(fresh_bundle):
    fresh_bundle.run("init", "--owner", "postgres=abc").assert_one_error("invalid --owner")


def test_keyboard_interrupt_is_exit_130(monkeypatch, config_file, tmp_path, cli):
    from bootstrap.commands import init

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(init, "run", interrupted)
    result = cli("init", "--config", config_file, "--out", tmp_path / "out")
    assert result.code == 130 and result.err == "error: interrupted\n"
