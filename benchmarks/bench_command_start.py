"""What starting one command costs: the interpreter, the imports, the parser, as each container of
the compose stack pays it at every `make up` (on a 2-core host that CPU lands on the start's path).

    python3 benchmarks/bench_command_start.py [--runs 7]

For each command the stack runs, `python -m bootstrap <command> --help` as a subprocess, --runs
times interleaved; prints the median CPU seconds (user + system, from the children's rusage) and
wall time, beside `python -m bootstrap --help`, which loads every command, and a bare interpreter.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the compose stack starts (bootstrap, the servers, the refresher, the registration job).
COMMANDS = ("init", "serve-jwks", "serve-codec", "serve-ui-gate", "mint-tokens", "register-namespaces")
CASES = {"python -c pass": ["-c", "pass"], **{c: ["-m", "bootstrap", c, "--help"] for c in COMMANDS},
         "--help (every command)": ["-m", "bootstrap", "--help"]}


def run_once(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(runs):
        for name, args in CASES.items():
            samples[name].append(run_once(args))
    print(f"{'command':<26}{'CPU s (median)':>16}{'wall s (median)':>17}   ({runs} runs each)")
    for name, values in samples.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"{name:<26}{cpu:>16.3f}{wall:>17.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
