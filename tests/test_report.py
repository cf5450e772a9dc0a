"""`snakemake --report` on a finished run of the tiny workflow: the HTML report with its figures."""

from __future__ import annotations

import zipfile

import pytest

from .test_workflow import snakemake

pytestmark = pytest.mark.slow   # needs a whole-workflow run: `pytest -m "not slow"` skips it


def test_report_zip_of_the_tiny_workflow(tiny_workflow):
    report = tiny_workflow / "report.zip"
    r = snakemake(tiny_workflow, "--report", str(report))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    with zipfile.ZipFile(report) as z:
        names = z.namelist()
        html = z.read(next(n for n in names if n.endswith("/report.html"))).decode()
    # the figures declared with report(...) in the rules are in it, by category
    for figure in ("pseudo-frame-0.png", "curve.png", "sintering.png", "model_contours.png"):
        assert any(n.endswith(figure) for n in names), (figure, names)
    for category in ("Pseudo-labels", "Training", "Sintering", "Evaluation"):
        assert category in html, category
