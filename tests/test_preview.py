"""`etemseg pseudolabel-preview`: a few frames x several parameter choices, from a raw frame dump
(before ingest) or a movie store, as one PNG grid with contours and particle counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from etemseg.cli import main
from etemseg.errors import ConfigError
from etemseg.stages.pseudolabel import (PRESETS, parse_vary, preview, pseudolabel_stack,
                                        resolve_for_movie)
from tests.conftest import write_k2_dump

imageio = pytest.importorskip("imageio")

CENTRES = [(20, 20), (50, 40), (30, 72)]        # three dark discs (radius 7 px), moving right


@pytest.fixture
def dump(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 80, 96
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(6):
        f = rng.normal(1000, 40, (h, w))
        for cy, cx in CENTRES:
            f[(yy - cy) ** 2 + (xx - cx - t) ** 2 <= 49] -= 400
        frames.append(np.clip(f, 0, 65535).astype(np.uint16))
    return write_k2_dump(tmp_path / "dump", np.array(frames), range(6))


def test_parse_vary_makes_every_combination_with_field_types():
    choices = parse_vary(["sigma=1,2", "opening-radius=0,3", "fill_holes=true"])
    assert choices == [{"sigma": 1.0, "opening_radius": 0, "fill_holes": True},
                       {"sigma": 1.0, "opening_radius": 3, "fill_holes": True},
                       {"sigma": 2.0, "opening_radius": 0, "fill_holes": True},
                       {"sigma": 2.0, "opening_radius": 3, "fill_holes": True}]
    assert parse_vary(["sigma_nm=null,0.36"]) == [{"sigma_nm": None}, {"sigma_nm": 0.36}]
    assert parse_vary([]) == [{}]
    for spec, words in (("bogus=1", "unknown parameter 'bogus'"), ("sigma", "NAME=V1,V2"),
                        ("opening_radius=2.5", "not a int"), ("fill_holes=maybe", "not a bool")):
        with pytest.raises(ConfigError, match="--vary") as err:
            parse_vary([spec])
        assert words in str(err.value)


def test_preview_of_a_raw_dump(dump, tmp_path):
    out = tmp_path / "preview.png"
    rows = preview(dump, out, frames=[0, 5], vary=parse_vary(["sigma=1,2", "opening_radius=0,3"]),
                   preset="paper")
    assert [(r["frame"], r["choice"]) for r in rows[:2]] == [
        (0, {"sigma": 1.0, "opening_radius": 0}), (5, {"sigma": 1.0, "opening_radius": 0})]
    assert len(rows) == 8 and all(r["particles"] == len(CENTRES) for r in rows)
    # each column used its own parameters: the panel equals the recipe run with them
    from etemseg.io.framedump import read_frame, scan_dump

    frame = read_frame(scan_dump(dump).sources[5]).astype(np.float32)
    for row in rows:
        if row["frame"] != 5:
            continue
        params = PRESETS["paper"].__class__.from_dict(row["params"])
        mask = pseudolabel_stack(frame[None], params)[0]
        assert row["coverage"] == pytest.approx(mask.mean())
        assert row["particles"] == ndimage.label(mask, structure=np.ones((3, 3)))[1]
    coverage = {r["choice"]["sigma"]: r["coverage"] for r in rows if r["frame"] == 0}
    assert coverage[2.0] != coverage[1.0]
    png = imageio.v2.imread(out)[..., :3].astype(int)
    assert png.shape[1] > png.shape[0]                       # 4 columns, 2 rows
    gold = np.abs(png - [255, 215, 0]).max(axis=-1) < 40
    assert gold.sum() > 100                                  # contours drawn


def test_store_and_dump_give_the_same_panels(dump, tmp_path):
    store = tmp_path / "frames.zarr"
    assert main(["--quiet", "ingest", str(dump), str(store)]) == 0
    kwargs = dict(frames=[1, 4], vary=parse_vary(["sigma=1.5"]), preset="paper")
    a = preview(dump, tmp_path / "a.png", **kwargs)
    b = preview(store, tmp_path / "b.png", **kwargs)
    assert [(r["particles"], r["coverage"]) for r in a] == [(r["particles"], r["coverage"])
                                                            for r in b]


def test_nm_choices_resolve_at_the_pixel_size(dump, tmp_path):
    rows = preview(dump, tmp_path / "p.png", frames=[0], pixel_size_nm=0.5,
                   vary=parse_vary(["sigma_nm=0.5,1.0"]))
    expect = [resolve_for_movie(PRESETS["default"].__class__.from_dict(
        {**PRESETS["default"].to_dict(), "sigma_nm": s}), 0.5, None)[0].sigma for s in (0.5, 1.0)]
    assert [r["params"]["sigma"] for r in rows] == pytest.approx(expect) == [1.0, 2.0]


def test_cli(dump, tmp_path, capsys):
    out = tmp_path / "p.png"
    base = ["pseudolabel-preview", str(dump), str(out)]
    assert main(base + ["--frames", "0,5", "--vary", "sigma=1,2", "--preset", "paper",
                        "--opening-radius", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and out.is_file()
    for args, words in ((["--frames", "0,99"], "--frames: 99 is outside 0..5"),
                        (["--frames", "a"], "--frames: expected frame indices"),
                        (["--vary", "bogus=1"], "--vary: unknown parameter"),
                        (["--preset", "nope"], "--preset: unknown preset")):
        assert main(base + args) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
    assert main(["pseudolabel-preview", str(dump), str(dump / "x.png")]) == 2   # inside input
