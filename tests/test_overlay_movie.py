"""The overlay movie (`etemseg overlay-movie`): which frames (stride and length from ms and s),
that the MP4 decodes with a standard reader, that contours carry their track's colour and that
event markers appear in the right output frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from etemseg.analysis.overlay_movie import (PALETTE, OverlayMovieParams, draw_contours,
                                            plan_movie, render_overlay_movie, track_id_image)
from etemseg.cli import build_parser, main
from etemseg.io.parquet import write_table_set
from etemseg.io.store import MovieStore, create_store

imageio = pytest.importorskip("imageio")
pytest.importorskip("imageio_ffmpeg")

ROOT = Path(__file__).resolve().parents[1]
#: particle id -> (centre y, centre x, radius) px, and the frames it exists in
DISCS = {1: ((45, 50, 9), range(0, 10)), 2: ((55, 120, 11), range(0, 20))}
#: kind, frame, y_px, x_px, eq_diameter_nm
EVENTS = [("coalescence", 10, 45.0, 50.0, 12.0), ("vanish", 15, 70.0, 160.0, 3.0)]
PS_NM, FPS = 0.5, 400.0


def make_results(root: Path, n: int = 20, shape=(128, 192)) -> dict:
    """A tiny tracked movie: ``root/frames.zarr``, ``root/m1/mask.zarr`` and the track tables in
    ``root/m1`` (particle 1 exists in frames 0-9, particle 2 throughout; a coalescence at frame
    10 and a vanish at frame 15)."""
    from etemseg.tracking import EVENTS_SCHEMA

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    masks = np.zeros((n, *shape), np.uint8)
    for (cy, cx, r), frames in DISCS.values():
        for t in frames:
            masks[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    raw = rng.normal(1000, 150, (n, *shape)) - 500.0 * masks
    frames_path, model_dir = root / "frames.zarr", root / "m1"
    create_store(frames_path, n_frames=n, frame_shape=shape, dtype=np.uint16, chunk_frames=10,
                 zarr_chunk_frames=5, fps=FPS, pixel_size_nm=PS_NM, attrs={"stage": "ingest"})
    frames = MovieStore.open(frames_path, mode="r+")
    frames.array[:] = np.clip(raw, 0, 65535).astype(np.uint16)
    mask_store = frames.like(model_dir / "mask.zarr", np.uint8, attrs={"stage": "infer-mask"},
                             label=True)
    mask_store.array[:] = masks
    rows = []
    for t in range(n):
        lab, k = ndimage.label(masks[t], structure=np.ones((3, 3), bool))
        for label, (cy, cx) in zip(range(1, k + 1), ndimage.center_of_mass(masks[t], lab,
                                                                           range(1, k + 1))):
            pid = min(DISCS, key=lambda p: (DISCS[p][0][0] - cy) ** 2 + (DISCS[p][0][1] - cx) ** 2)
            rows.append({"particle": pid, "frame": t, "time_s": t / FPS, "label": label,
                         "x_px": cx, "y_px": cy, "x_nm": cx * PS_NM, "y_nm": cy * PS_NM})
    events = pd.DataFrame({
        "kind": [e[0] for e in EVENTS], "frame": [e[1] for e in EVENTS],
        "time_s": [e[1] / FPS for e in EVENTS], "parents": [[1, 2], [3]],
        "children": [[2], []], "child": [2, -1], "x_nm": [e[3] * PS_NM for e in EVENTS],
        "y_nm": [e[2] * PS_NM for e in EVENTS], "x_px": [e[3] for e in EVENTS],
        "y_px": [e[2] for e in EVENTS], "eq_diameter_nm": [e[4] for e in EVENTS],
        "volume_ratio": [1.0, np.nan]})
    for name in EVENTS_SCHEMA.names:      # columns this test does not care about
        if name not in events:
            events[name] = pd.Series([None] * len(events), dtype=object)
    write_table_set(model_dir, {"trajectories": (pd.DataFrame(rows), None),
                                "events": (events, EVENTS_SCHEMA)},
                    metadata={"movie": "tiny", "model": "m1"})
    return {"frames": frames_path, "masks": model_dir / "mask.zarr", "tracks": model_dir,
            "mask_array": masks}


def decode(path: Path) -> np.ndarray:
    """Every frame of an MP4 through imageio's ffmpeg reader, (K, H, W, 3) uint8."""
    with imageio.v2.get_reader(path, format="FFMPEG") as reader:
        return np.stack(list(reader.iter_data()))


# --- which frames ------------------------------------------------------------------------


def test_a_ten_minute_k2_movie_becomes_one_minute():
    """240,000 frames at 400 frames/s, 60 s at 25 fps: 1,500 frames of 400 ms (160 frames)."""
    plan = plan_movie(np.arange(240_000) / 400.0, 400.0, OverlayMovieParams())
    assert len(plan.frames) == 1500 and plan.stride == 160
    assert plan.every_ms == pytest.approx(400.0) and plan.speed == pytest.approx(10.0)
    assert plan.seconds == pytest.approx(60.0) and not plan.truncated
    np.testing.assert_array_equal(plan.frames, np.arange(0, 240_000, 160))


@pytest.mark.parametrize("every_ms, max_seconds, fps, stride, count, truncated", [
    (100.0, 60.0, 25.0, 40, 1500, True),      # 6,000 frames wanted, 1,500 fit
    (1000.0, 60.0, 25.0, 400, 600, False),    # 600 s of movie in 24 s
    (1.0, 10.0, 30.0, 1, 300, True),          # 1 ms < one frame (2.5 ms): every frame
    (None, 2.0, 10.0, 12000, 20, False),      # the whole movie in 2 s
])
def test_stride_and_length_from_ms_and_s(every_ms, max_seconds, fps, stride, count, truncated):
    params = OverlayMovieParams(every_ms=every_ms, max_seconds=max_seconds, fps=fps)
    plan = plan_movie(np.arange(240_000) / 400.0, 400.0, params)
    assert (plan.stride, len(plan.frames), plan.truncated) == (stride, count, truncated)
    assert plan.every_ms == pytest.approx(stride / 400.0 * 1000.0)


def test_a_gap_is_skipped_not_spread():
    """Frames 10-29 missing: the frame after the gap is shown once, later frames keep their
    times (picked by time, not by position in the store)."""
    index = np.r_[0:10, 30:60]
    plan = plan_movie(index / 400.0, 400.0, OverlayMovieParams(every_ms=12.5))   # 5 frames
    assert index[plan.frames].tolist() == [0, 5, 30, 35, 40, 45, 50, 55]


def test_bad_settings_name_the_key():
    from etemseg.errors import ConfigError

    with pytest.raises(ConfigError, match="overlay_movie.every_ms"):
        OverlayMovieParams(every_ms=0).validate()
    with pytest.raises(ConfigError, match="overlay_movie.bogus"):
        OverlayMovieParams.from_dict({"bogus": 1})


# --- the movie -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    paths = make_results(root)
    params = OverlayMovieParams(fps=10.0, line_px=3, crf=12)
    out = root / "m1" / "overlay.mp4"
    summary = render_overlay_movie(paths["frames"], paths["masks"], paths["tracks"], out,
                                   params=params, title="tiny / m1")
    return paths, out, summary, decode(out)


def test_movie_decodes_with_the_planned_frames_and_size(rendered):
    paths, out, summary, video = rendered
    assert summary["frames"] == 20 and summary["stride"] == 1
    assert video.shape == (20, 128, 192, 3)
    assert summary["size"] == [128, 192]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())   # no temporaries


def test_contours_carry_their_track_colour(rendered):
    paths, _, _, video = rendered
    ids = track_id_image(paths["mask_array"][0], [1, 2], [1, 2])
    assert set(np.unique(ids)) == {0, 1, 2}
    edge = draw_contours(np.zeros((*ids.shape, 3), np.uint8), ids, line_px=3)
    for pid in (1, 2):
        drawn = video[0][edge & (ids == pid)].astype(int)
        colour = np.median(drawn, axis=0)
        assert np.abs(colour - PALETTE[pid % len(PALETTE)]).max() < 40, (pid, colour)
    # the same track keeps its colour later on (particle 2 in the last frame)
    ids = track_id_image(paths["mask_array"][-1], [1], [2])
    edge = draw_contours(np.zeros((*ids.shape, 3), np.uint8), ids, line_px=3)
    colour = np.median(video[-1][edge].astype(int), axis=0)
    assert np.abs(colour - PALETTE[2]).max() < 40


def test_event_markers_appear_at_their_frame(rendered):
    """The coalescence ring (white, black outline) is on from frame 10 and for event_s = 0.4 s
    of playback (4 frames at 10 fps), not before; the vanish cross (red) from frame 15."""
    from skimage.draw import circle_perimeter

    _, _, _, video = rendered
    r = int(round(12.0 / PS_NM / 2 + 5))            # eq. radius px + max(4, line_px + 2)
    ring = circle_perimeter(45, 50, r)
    outline = circle_perimeter(45, 50, r - 1)
    grey = video[..., :].mean(axis=-1)
    assert grey[10][ring].mean() > 220 and grey[10][outline].mean() < 70
    assert grey[9][ring].mean() < 210 and grey[9][outline].mean() > 110
    assert grey[13][ring].mean() > 220 and grey[14][ring].mean() < 210
    red = video[..., 0].astype(int) - video[..., 1].astype(int)
    near = (slice(63, 78), slice(153, 168))
    assert (red[15][near] > 120).sum() >= 10 and (red[14][near] > 120).sum() == 0


def test_cli_renders_and_refuses_bad_output(tmp_path, capsys):
    paths = make_results(tmp_path)
    out = tmp_path / "movie.mp4"
    args = ["--quiet", "overlay-movie", str(paths["frames"]), str(paths["masks"]),
            str(paths["tracks"]), str(out), "--every-ms", "5", "--fps", "5"]
    assert main(args) == 0
    assert len(decode(out)) == 10                      # 5 ms = 2 frames at 400 fps
    capsys.readouterr()
    assert main(args[:5] + [str(paths["masks"])]) == 2     # output = an input
    assert "is also an input" in capsys.readouterr().err
    assert main(args[:6] + ["--every-ms", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "overlay_movie.every_ms" in err and len(err.splitlines()) == 1


def test_help_names_the_units():
    parser = build_parser(only="overlay-movie")
    sub = next(a for a in parser._actions if a.dest == "command").choices["overlay-movie"]
    text = sub.format_help()
    for words in ("ms", "frames/s", "playback, s", "px"):
        assert words in text


def test_schema_block_matches_the_dataclass_and_the_cli():
    import dataclasses

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["overlay_movie"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(OverlayMovieParams)}
    assert set(props) == set(fields)
    parser = build_parser(only="overlay-movie")
    sub = next(a for a in parser._actions if a.dest == "command").choices["overlay-movie"]
    cli = {a.dest: a.default for a in sub._actions}
    for name, default in fields.items():
        assert props[name]["default"] == default == cli[name], name
