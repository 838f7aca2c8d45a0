"""The command layer stays thin (docs: LAYOUT): a command imports ops, core, servers and the
shared commands/common.py, never another command; ops never import commands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bootstrap"
COMMANDS = sorted(p for p in (PACKAGE / "commands").glob("*.py") if p.name != "__init__.py")
SHARED = {"common"}


def sibling_imports(path: Path) -> set[str]:
    """Modules of bootstrap/commands this file imports (relative imports at level 1)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {alias.name for alias in node.names} if node.module is None else {node.module.split(".")[0]}
    return found - SHARED


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.stem)
def test_a_command_imports_no_sibling_command(path):
    assert sibling_imports(path) == set()


def test_the_sibling_check_sees_both_import_forms(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from . import generate_certs\nfrom .check_expiry import exit_code\nfrom .common import load\n"
                     "from ..ops.expiry import check\n")
    assert sibling_imports(probe) == {"generate_certs", "check_expiry"}


def test_ops_never_import_commands():
    for path in sorted((PACKAGE / "ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("commands") and "bootstrap.commands" not in node.module, path
