"""Temporal averaging of the input frames (issue 11, "use time"): the windowed reads of the
movie store equal a direct centred mean, across Zarr blocks, time chunks and the movie's ends."""

from __future__ import annotations

import numpy as np
import pytest

from etemseg.errors import ConfigError
from etemseg.io.store import MovieStore, create_store, frames_in_window, read_chunk_ahead


def frames_store(path, frames: np.ndarray, chunk_frames: int, zarr_chunk_frames: int
                 ) -> MovieStore:
    """A 400 frames/s, 0.2 nm/px store at ``path`` holding the uint16 ``frames``."""
    create_store(path, n_frames=len(frames), frame_shape=frames.shape[1:], dtype=np.uint16,
                 chunk_frames=chunk_frames, fps=400.0, pixel_size_nm=0.2,
                 zarr_chunk_frames=zarr_chunk_frames)
    MovieStore.open(path, "r+").array[:] = frames
    return MovieStore.open(path)


@pytest.fixture()
def store(tmp_path):
    frames = np.random.default_rng(0).integers(0, 60000, (21, 8, 9)).astype(np.uint16)
    return frames_store(tmp_path / "f.zarr", frames, 8, 4), frames


def centred_mean(frames: np.ndarray, window: int) -> np.ndarray:
    h = window // 2
    return np.stack([frames[max(0, t - h):t + h + 1].astype(np.float64).mean(0)
                     for t in range(len(frames))])


@pytest.mark.parametrize("window", [3, 5, 9, 41])
def test_windowed_chunks_equal_the_centred_mean(store, window):
    s, frames = store
    want = centred_mean(frames, window)
    for depth in (1, 3):
        got = np.concatenate([b for k in range(s.n_chunks)
                              for _, b in read_chunk_ahead(s, k, depth, window)])
        assert got.dtype == np.float32 and got.shape == frames.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(s.read_mean(5, 13, window), want[5:13], rtol=1e-6)


def test_window_one_is_the_raw_frames(store):
    s, frames = store
    got = np.concatenate([b for k in range(s.n_chunks) for _, b in s.read_chunk(k, 1)])
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, frames)


def test_window_in_ms_is_an_odd_number_of_frames():
    assert [frames_in_window(ms, 400.0) for ms in (0, 2.5, 5, 7.5, 10, 12.5, 20)] == \
        [1, 1, 3, 3, 5, 5, 9]
    assert frames_in_window(12.5, 200.0) == 3 and frames_in_window(20, 40.0) == 1
    assert frames_in_window(50, 40.0) == 3     # 2 frames: halfway, rounded up
    with pytest.raises(ConfigError, match="window_ms"):
        frames_in_window(-1, 400.0)


def test_even_window_is_refused(store):
    with pytest.raises(ConfigError, match="odd"):
        store[0].read_mean(0, 4, 4)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_take_with_a_window_in_any_order(store, window):
    s, frames = store
    idx = np.array([20, 3, 4, 5, 0, 11, 12, 4])
    want = centred_mean(frames, window)[idx]
    got = s.take(idx, window)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert s.take(np.array([], np.int64), window).shape == (0, 8, 9)


def test_window_reads_missing_neighbour_chunks_from_the_dump(tmp_path):
    """A pseudo-label chunk job does not wait for its neighbours' ingest: frames of a time chunk
    not yet ingested come from the frame dump, with the pixels ingest will write."""
    from etemseg.stages.ingest import ingest_chunk, init_store
    from etemseg.synth import SynthParams, write_synthetic_movie

    write_synthetic_movie(tmp_path / "synth", SynthParams(frames=12, height=32, width=40, seed=2),
                          progress=False)
    full = init_store(tmp_path / "synth/frames", tmp_path / "full.zarr", chunk_frames=4,
                      zarr_chunk_frames=2)
    for k in range(3):
        ingest_chunk(full, k)
    part = init_store(tmp_path / "synth/frames", tmp_path / "part.zarr", chunk_frames=4,
                      zarr_chunk_frames=2)
    ingest_chunk(part, 1)                        # chunks 0 and 2 not ingested yet
    want = MovieStore.open(tmp_path / "full.zarr").read_mean(4, 8, 5)
    got = np.concatenate([b for _, b in MovieStore.open(tmp_path / "part.zarr").read_chunk(1, 5)])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(Exception, match="missing"):    # its own frames must be there
        MovieStore.open(tmp_path / "part.zarr").read_mean(0, 4, 5)


def test_training_reads_means_and_inference_follows_the_model(tmp_path):
    """The CNN sees what it was trained on: the training data's window is recorded and
    ``etemseg infer`` feeds the same means (single frames to models trained without one)."""
    from etemseg.nn.checkpoint import normalise_frames
    from etemseg.nn.training import TrainConfig, load_training_data
    from etemseg.protocol import run
    from etemseg.stages.infer import input_window
    from etemseg.stages.ingest import ingest
    from etemseg.stages.pseudolabel import PRESETS, PseudolabelStage
    from etemseg.synth import SynthParams, write_synthetic_movie

    write_synthetic_movie(tmp_path / "synth", SynthParams(frames=8, height=48, width=64, seed=4),
                          progress=False)
    frames = ingest(tmp_path / "synth/frames", tmp_path / "f.zarr", chunk_frames=4,
                    progress=False)
    run(PseudolabelStage(tmp_path / "f.zarr", tmp_path / "p.zarr", preset="default",
                         params=PRESETS["default"]))
    pair = [(tmp_path / "f.zarr", tmp_path / "p.zarr")]
    data = load_training_data(pair, TrainConfig(split="random"))
    assert data.window_ms == 12.5
    np.testing.assert_allclose(data.images.astype(np.float32),
                               normalise_frames(frames.take(np.arange(8), 5)).astype(np.float16)
                               .astype(np.float32))
    single = load_training_data(pair, TrainConfig(split="random", window_ms=0))
    assert single.window_ms == 0 and not np.array_equal(single.images, data.images)
    assert input_window({"data": {"window_ms": 12.5}}, frames) == 5
    assert input_window({"data": {"window_ms": 0.0}}, frames) == 1
    assert input_window({"data": {}}, frames) == 1           # models from before the window
