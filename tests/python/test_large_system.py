"""A 20,000-atom periodic water box runs with bounded memory (issue: linear-scaling model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_twenty_thousand_atoms_fit_in_bounded_memory():
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "large_system.py"), "--reps", "6", "6", "3"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    info = json.loads(res.stdout.strip().splitlines()[-1])
    print(info)
    assert info["natoms"] == 20736
    assert info["peak_rss_gb"] < 8.0  # an all-pairs or padded angle layout would need far more
    assert 0 < info["max_force"] < 10  # finite, physical-looking numbers
