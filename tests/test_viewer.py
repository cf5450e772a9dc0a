"""`etemseg view`: the layers napari gets (built headless) and the OME-NGFF label metadata that
pairs a mask store with its frames. Opening the napari window itself is optional (skipped
without napari)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from etemseg.analysis.napari_layers import find_models, label_source, layer_data, tracks_layer
from etemseg.cli import main
from etemseg.errors import ConfigError, InputFileError
from etemseg.io.store import MovieStore, create_store
from tests.test_overlay_movie import DISCS, PS_NM, make_results


@pytest.fixture
def results(tmp_path):
    return make_results(tmp_path)


def test_mask_store_is_an_ome_ngff_label_image_of_the_frames(results):
    attrs = json.loads((results["masks"] / "zarr.json").read_text())["attributes"]["ome"]
    frames = json.loads((results["frames"] / "zarr.json").read_text())["attributes"]["ome"]
    assert attrs["version"] == "0.5"
    label = attrs["image-label"]
    assert label["source"] == {"image": "../../frames.zarr"}
    assert {c["label-value"] for c in label["colors"]} == {0, 1}
    assert all(len(c["rgba"]) == 4 and all(0 <= v <= 255 and isinstance(v, int)
                                           for v in c["rgba"]) for c in label["colors"])
    # same axes and scales as the image it labels, one dataset of an integer type
    assert attrs["multiscales"][0]["axes"] == frames["multiscales"][0]["axes"]
    assert (attrs["multiscales"][0]["datasets"] == frames["multiscales"][0]["datasets"])
    assert np.issubdtype(MovieStore.open(results["masks"]).array.dtype, np.integer)
    assert label_source(results["masks"]) == results["frames"]


def test_label_source_refuses_a_store_without_label_metadata(tmp_path, results):
    with pytest.raises(InputFileError, match="no OME-NGFF image-label"):
        label_source(results["frames"])
    with pytest.raises(ConfigError, match="integer dtype"):
        create_store(tmp_path / "p.zarr", n_frames=2, frame_shape=(4, 4), dtype=np.float32,
                     chunk_frames=2, fps=1.0, pixel_size_nm=None, image_label={})


def test_an_ome_zarr_reader_pairs_mask_and_frames(results):
    """ome-zarr-py (napari-ome-zarr's reader) opening the mask store also loads its image."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(results["masks"])))())
    kinds = {str(n.zarr.path).rstrip("/").rsplit("/", 1)[-1]: n for n in nodes}
    assert set(kinds) == {"mask.zarr", "frames.zarr"}
    assert kinds["mask.zarr"].load(Label) is not None
    assert kinds["frames.zarr"].load(Multiscales) is not None
    assert kinds["frames.zarr"].data[0].shape == kinds["mask.zarr"].data[0].shape


def test_layers_of_a_movie(results):
    root = results["frames"].parent
    assert find_models(root) == ["m1"]
    layers = layer_data(root)
    assert [kind for _, _, kind in layers] == ["image", "labels", "tracks"]
    (image, ik, _), (labels, lk, _), (tracks, tk, _) = layers
    assert image.shape == labels.shape == (20, 128, 192)
    assert ik["scale"] == lk["scale"] == tk["scale"] == (1.0, PS_NM, PS_NM)
    np.testing.assert_array_equal(labels[:], results["mask_array"])
    lo, hi = ik["contrast_limits"]
    assert lo < 600 < 1000 < hi                         # particles ~500, support ~1000 counts
    # napari tracks rows: [track_id, t, y, x], sorted by track then time
    assert tracks.shape[1] == 4
    assert np.all(np.diff(tracks[:, 0] * 1000 + tracks[:, 1]) > 0)
    for pid, ((cy, cx, _), frames) in DISCS.items():
        rows = tracks[tracks[:, 0] == pid]
        assert rows[:, 1].tolist() == list(frames)
        np.testing.assert_allclose(rows[:, 2:], [[cy, cx]] * len(rows), atol=0.5)
    assert tk["graph"] == {2: [1]}                      # particle 1 merged into 2


def test_layers_from_a_mask_store_and_bad_models(results):
    via_mask = layer_data(results["masks"])
    assert [k["name"] for _, k, _ in via_mask] == [f"{results['frames'].parent.name} frames",
                                                   "m1 mask", "m1 tracks"]
    with pytest.raises(ConfigError, match="--model: no .*nope.*models here: m1"):
        layer_data(results["frames"].parent, ["nope"])


def test_tracks_layer_without_tracking_is_none(tmp_path):
    assert tracks_layer(tmp_path) is None


def test_cli_lists_layers_and_needs_napari_for_the_window(results, capsys, monkeypatch):
    root = str(results["frames"].parent)
    assert main(["view", root, "--list"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["type"] for r in rows] == ["image", "labels", "tracks"]
    assert rows[0]["shape"] == [20, 128, 192] and rows[0]["scale"] == [1.0, PS_NM, PS_NM]
    monkeypatch.setitem(sys.modules, "napari", None)        # as if the extra were missing
    assert main(["view", root]) == 2
    err = capsys.readouterr().err.strip()
    assert "napari is not installed" in err and len(err.splitlines()) == 1


def test_napari_window_opens_with_the_layers(results):
    """Optional: only where the `view` extra (napari) and a Qt platform are installed."""
    napari = pytest.importorskip("napari")
    try:
        viewer = napari.Viewer(show=False)
    except Exception as exc:  # noqa: BLE001 - no display / Qt platform here
        pytest.skip(f"napari cannot start here: {exc}")
    try:
        for data, kwargs, kind in layer_data(results["frames"].parent):
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels", "Tracks"]
    finally:
        viewer.close()
