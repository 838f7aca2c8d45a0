"""The image build script takes its Debian mirror from the machine's own apt sources (no host
name in the project), in both apt source formats."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-images.sh"


def apt_mirror(etc: Path, suite: str) -> subprocess.CompletedProcess:
    function = subprocess.run(["sed", "-n", "/^apt_mirror() {/,/^}/p", str(SCRIPT)], capture_output=True, text=True).stdout
    assert function.startswith("apt_mirror() {")
    return subprocess.run(["bash", "-c", f"{function}\napt_mirror {suite}"], capture_output=True, text=True,
                          env={"APT_ETC": str(etc), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def etc(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.internal/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb-src\nURIs: http://src.internal/debian\nSuites: bookworm-security\n"
    )
    (tmp_path / "sources.list.d" / "security.list").write_text(
        "# deb http://commented.internal/x bookworm-security main\n"
        "deb [signed-by=/k.gpg] http://security.internal/debian-security bookworm-security main\n"
    )
    return tmp_path


def test_deb822_and_one_line_sources_are_both_read(etc):
    assert apt_mirror(etc, "bookworm").stdout.strip() == "http://mirror.internal/debian"
    assert apt_mirror(etc, "bookworm-security").stdout.strip() == "http://security.internal/debian-security"


def test_a_suite_nobody_serves_is_an_error(etc):
    assert apt_mirror(etc, "trixie").returncode == 1


def test_no_debian_host_name_is_written_in_the_script():
    assert "debian.org" not in SCRIPT.read_text()
