#!/usr/bin/env python3
"""The fault matrix under load, as figures: `make up` on stand-in images (a stack of its own), then
tests/support/fault_load.py's steady load of workflow starts, signals and completions while each
fault of tests/support/faults.py is injected in turn. Prints the table of benchmarks/RESULTS.md, and for the codec
server's outage whether a decode failed while it was down and how soon one worked again.

    python3 benchmarks/bench_faults.py [--keep]

The pass/fail version (bounds, the full-bundle case) is tests/docker/test_faults.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bootstrap.core.config import load_config  # noqa: E402
from tests.support import faults  # noqa: E402
from tests.support.compose_stack import ComposeStack, build_standin_images, unique_project  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    images = build_standin_images()
    stack = ComposeStack(unique_project("tbbenchfault"), Path(tempfile.mkdtemp(prefix="bench-faults-")), images)
    print(f"make up: {stack.up():.0f} s", flush=True)
    try:
        refresh = load_config(stack.config).jwt.refresh_interval.total_seconds()
        rows, codec = [], {}
        for name, inject in faults.service_faults(refresh, codec):
            outcome = faults.under_fault(stack, name, inject)
            rows.append(outcome.row())
            print(outcome.row(), "errors:", outcome.errors, flush=True)
        print("\n" + faults.TABLE_HEAD + "\n" + "\n".join(rows))
        print(f"codec server down: decode {'refused' if not codec['while_down']['ok'] else 'WORKED'} "
              f"({codec['while_down'].get('error', '')}); back {codec['back_after_s']:.1f} s after its start")
    finally:
        if not args.keep:
            print(f"logs: {stack.teardown()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
