"""The streaming I/O of a chunk job (`etemseg.io.store`): read-ahead, windowed means, block
writer, and the waits they report (where a job's time goes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from etemseg.io.store import BlockWriter, MovieStore, map_chunk, read_chunk_ahead

from .test_temporal_window import frames_store


@pytest.fixture()
def pair(tmp_path):
    frames = np.random.default_rng(2).integers(0, 4000, (24, 6, 7)).astype(np.uint16)
    src = frames_store(tmp_path / "f.zarr", frames, 12, 3)
    dst = src.like(tmp_path / "o.zarr", np.uint16)
    return src, dst, frames


class SlowArray:
    """Stands in for a Zarr array whose every write takes ``delay`` s."""

    def __init__(self, shape, delay):
        self.data, self.delay = np.zeros(shape, np.uint16), delay

    def __setitem__(self, key, value):
        time.sleep(self.delay)
        self.data[key] = value


def test_block_writer_counts_the_time_the_producer_waited():
    arr = SlowArray((8, 2, 2), 0.05)
    with BlockWriter(arr, depth=1) as writer:
        for b0 in range(0, 8, 2):
            writer.submit(b0, np.full((2, 2, 2), b0 + 1, np.uint16))
    assert (arr.data[:, 0, 0] == [1, 1, 3, 3, 5, 5, 7, 7]).all()
    # four writes of 50 ms, one in flight at a time: the producer waited for at least three
    assert writer.waited_s >= 0.14 and writer.written == 4


def test_fast_writes_cost_no_wait():
    arr = SlowArray((8, 2, 2), 0.0)
    with BlockWriter(arr, depth=2) as writer:
        for b0 in range(0, 8, 2):
            writer.submit(b0, np.zeros((2, 2, 2), np.uint16))
    assert writer.waited_s < 0.1


@pytest.mark.parametrize("window", [1, 3, 7])
def test_read_ahead_reports_its_waits_and_keeps_the_frames(pair, window):
    src, _, frames = pair
    waits: dict = {}
    got = np.concatenate([b for k in range(src.n_chunks)
                          for _, b in read_chunk_ahead(src, k, 2, window, waits)])
    assert got.shape == frames.shape and waits["read_wait_s"] >= 0.0
    if window == 1:
        np.testing.assert_array_equal(got, frames)


def test_map_chunk_reports_read_and_write_waits(pair):
    src, dst, frames = pair
    waits: dict = {}
    map_chunk(src, dst, 0, lambda block, b0: block, io_threads=2, waits=waits)
    assert set(waits) == {"read_wait_s", "write_wait_s"}
    assert all(v >= 0.0 for v in waits.values())
    np.testing.assert_array_equal(MovieStore.open(dst.path).read(0, 12), frames[:12])


def test_window_means_of_no_frames_is_empty(pair):
    src, _, _ = pair
    assert src.read_mean(5, 5, 3).shape == (0, 6, 7)
