"""The three examples in docs/examples run as a user would run them, and say what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run(name: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_own_movie():
    stdout = run("own_movie.py")
    assert "6 frames of (256, 256) px, 0.18 nm/px" in stdout
    counts = [int(line.split()[1]) for line in stdout.splitlines()[3:9]]
    assert len(counts) == 6 and all(10 <= n <= 25 for n in counts)


def test_sintering_analysis():
    stdout = run("sintering_analysis.py", "24")
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.startswith(("K_nm3_per_s", "ci_low", "ci_high"))}
    measured, truth = (float(v) for v in rows["K_nm3_per_s"])
    assert measured > 0 and truth > 0 and abs(measured / truth - 1) < 0.5


def test_model_comparison():
    stdout = run("model_comparison.py")
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[1:]}
    assert set(rows) == {"single-filter", "shallow-wide", "unet3-norm", "pseudo-labels"}
    assert float(rows["unet3-norm"][3]) > 0.8          # pixel F1 of the UNet against truth
    assert float(rows["pseudo-labels"][-2]) > 0.85     # the recipe it learned from
