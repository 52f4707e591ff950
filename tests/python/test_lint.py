"""The Python sources pass the project's ruff rule set (pyproject.toml, [tool.ruff.lint])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["python", "tests", "benchmarks", "scripts", "examples"]


def test_ruff_check_is_clean():
    """Fails on any rule violation, and also when ruff is missing (scripts/setup.sh installs it)."""
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format=concise", *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"ruff check failed:\n{r.stdout}{r.stderr}"
