"""Where the checkout is, for tests and benchmarks that read its files or run its scripts."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
