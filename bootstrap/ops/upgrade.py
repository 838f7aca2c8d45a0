"""The version rule of `make upgrade`, run on the host before anything changes (stdlib only).

Temporal supports upgrading one minor release at a time (1.31.x -> 1.32.y, each step's schema
migrations in order) and never downgrading a database a newer server has touched. So the target
must have the running release's major version, and a minor version equal to it (a later patch)
or one above it. The running release is the tag of the running temporal container's image; the
new server and admin-tools images must carry the target release's tag.

    python3 -m bootstrap.upgrade --running-image IMAGE --version X.Y.Z \\
        --server-image IMAGE --admin-tools-image IMAGE

Prints the plan and exits 0; exits 3 when the target is already running (nothing to do);
otherwise prints one `error: ...` line and exits 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

from ..errors import BundleError

NOTHING_TO_DO = 3
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def parse_version(text: str) -> Version:
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        raise BundleError(f"{text!r} is not a release version (expected X.Y.Z, e.g. 1.32.2)")
    return Version(*(int(part) for part in match.groups()))


def image_version(image: str, what: str) -> Version:
    """The release an image's tag names: temporalio/server:1.32.2 -> 1.32.2."""
    name = image.strip().split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        raise BundleError(f"{what} {image!r} has no version tag (name:X.Y.Z): cannot tell its release")
    tag = last.rsplit(":", 1)[1]
    if _VERSION.fullmatch(tag) is None:
        raise BundleError(f"{what} {image!r}: its tag {tag!r} is not a release version X.Y.Z")
    return parse_version(tag)


def check_step(running: Version, target: Version) -> bool:
    """True when there is something to do; raises BundleError for a downgrade or a skipped minor."""
    if target < running:
        raise BundleError(f"{running} -> {target} is a downgrade: refused (restore a backup taken before the upgrade instead)")
    if target.major != running.major:
        raise BundleError(f"{running} -> {target} changes the major version: refused (upgrade within {running.major}.x)")
    if target.minor > running.minor + 1:
        step = f"{running.major}.{running.minor + 1}"
        raise BundleError(f"{running} -> {target} skips a minor version: refused (upgrade to the latest {step}.x first)")
    return target != running


def check_images(target: Version, server_image: str, admin_tools_image: str) -> None:
    for what, image in (("TEMPORAL_SERVER_IMAGE", server_image), ("TEMPORAL_ADMINTOOLS_IMAGE", admin_tools_image)):
        if image_version(image, what) != target:
            raise BundleError(f"{what} is {image}, not release {target}: set it to the {target} image")


def plan(running_image: str, version: str, server_image: str, admin_tools_image: str) -> tuple[bool, str]:
    """(something to do, the line to print); raises BundleError for a refused upgrade."""
    if not running_image.strip():
        raise BundleError("the temporal service is not running (make up first): cannot tell its version")
    running = image_version(running_image, "the running temporal image")
    target = parse_version(version)
    if not check_step(running, target):
        return False, f"upgrade: temporal already runs {target} ({running_image}); nothing to do"
    check_images(target, server_image, admin_tools_image)
    return True, f"upgrade: {running} -> {target} (server {server_image}, admin-tools {admin_tools_image})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bootstrap.upgrade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running-image", required=True, help="the running temporal container's image ('' if none)")
    parser.add_argument("--version", required=True, help="the target release X.Y.Z")
    parser.add_argument("--server-image", required=True)
    parser.add_argument("--admin-tools-image", required=True)
    args = parser.parse_args(argv)
    try:
        todo, line = plan(args.running_image, args.version, args.server_image, args.admin_tools_image)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0 if todo else NOTHING_TO_DO


if __name__ == "__main__":
    sys.exit(main())
