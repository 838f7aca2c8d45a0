"""One entry point, `main(argv=None) -> int`; one module per command under bootstrap/commands.

Only this layer prints and picks exit codes. A BundleError anywhere becomes one line
`error: <message>` on stderr and exit code 1 (check-expiry documents its own codes).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .commands import COMMANDS, command_module
from .errors import BundleError


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for argv: with the named command's options only when argv names one."""
    parser = _Parser(
        prog="temporal-bundle",
        description="Bootstrap a Temporal cluster secured with mutual TLS and JWT authorization.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in _commands_needed(argv):
        command_module(name).add_parser(sub, name)
        sub.choices[name].set_defaults(parser=sub.choices[name])
    return parser


def _commands_needed(argv: list[str] | None) -> list[str]:
    """The command argv names; every command for anything else (the top-level help, an unknown
    name, which argparse answers with the list of choices)."""
    first = next((arg for arg in argv or () if not arg.startswith("-")), None)
    return [first] if first in COMMANDS else list(COMMANDS)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with the command's own code: for check-expiry 2 means 'critical', so a
    mistyped monitoring command must not look like an expiring certificate."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(self.get_default("usage_error_code") or 2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def run_and_exit(argv: list[str] | None = None) -> None:
    """Process entry: exit without interpreter finalisation. The Temporal SDK's Rust runtime keeps
    native threads that can abort a finalising interpreter ("PyGILState_Release ... finalizing"),
    turning a successful run into a crash at exit; all our files are fsynced already."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _alias(command: str):
    def entry() -> None:
        run_and_exit([command, *sys.argv[1:]])

    entry.__name__ = command.replace("-", "_")
    return entry


generate_certs = _alias("generate-certs")
mint_tokens = _alias("mint-tokens")
render_config = _alias("render-config")
serve_jwks = _alias("serve-jwks")
register_namespaces = _alias("register-namespaces")
check_expiry = _alias("check-expiry")
rotate = _alias("rotate")
serve_codec = _alias("serve-codec")
serve_exchange = _alias("serve-exchange")
export_helm = _alias("export-helm")
verify = _alias("verify")
