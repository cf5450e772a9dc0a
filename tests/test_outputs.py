"""The output-path policy: a stage replaces only its own previous output, never an input or
anything it does not recognise; refusals are one line, exit 2, and change nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etemseg.io.atomic import guard_output, holds_only, is_store_of
from etemseg.cli import main
from etemseg.errors import OutputPathError
from etemseg.io.parquet import read_table_set, write_table_set
from etemseg.nn.training import TrainConfig
from etemseg.stages.train import train

from .conftest import write_k2_dump
from .test_train import disks_data


def tree_digest(path: Path) -> dict:
    """Every file under ``path`` (or the file itself) -> sha256, to prove nothing changed."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def refused(capsys, *argv) -> str:
    """Run the CLI, assert a one-line refusal (exit 2) and return the line."""
    assert main(["--quiet", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A K2 dump, its frame store, a pseudo-label store and a tiny trained model."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    frames = rng.poisson(1000, size=(8, 32, 48)).astype(np.uint16)
    frames[:, 10:18, 10:18] //= 3
    raw = write_k2_dump(root / "raw", frames, range(8))
    assert main(["--quiet", "ingest", str(raw), str(root / "frames.zarr"),
                 "--chunk-frames", "4", "--pixel-size-nm", "0.2"]) == 0
    assert main(["--quiet", "pseudolabel", str(root / "frames.zarr"),
                 str(root / "pseudo.zarr")]) == 0
    cfg = TrainConfig(model="single-filter", epochs=1, batch_size=2, crop_px=32,
                      samples_per_epoch=4, device="cpu")
    train(disks_data(n=4, h=32, w=48), cfg, root / "model", progress=False)
    return root


def test_guard_output_relations(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    for target, words in ((src, "is also an input"), (src / "x.zarr", "inside the input"),
                          (tmp_path, "contains the input")):
        with pytest.raises(OutputPathError, match=words):
            guard_output(target, inputs=[src])
    assert guard_output(tmp_path / "new.zarr", inputs=[src]) == tmp_path / "new.zarr"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not a previous etemseg"):
        guard_output(other, own=holds_only("model.pt"))
    (tmp_path / "empty").mkdir()
    guard_output(tmp_path / "empty", own=holds_only("model.pt"))


@pytest.mark.parametrize("init", [False, True])
def test_ingest_never_replaces_its_source_or_foreign_paths(movie, tmp_path, capsys, init):
    raw = movie / "raw"
    before = tree_digest(raw)
    mode = ["--init"] if init else []
    assert "is also an input" in refused(capsys, "ingest", raw, raw, *mode)
    assert "inside the input" in refused(capsys, "ingest", raw, raw / "f.zarr", *mode)
    assert "contains the input" in refused(capsys, "ingest", raw, movie, *mode)
    assert tree_digest(raw) == before
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    plain = tmp_path / "plain.zarr"
    plain.write_text("not a store")
    pseudo = movie / "pseudo.zarr"          # an etemseg store, but of another stage
    for target in (foreign, plain, pseudo):
        kept = tree_digest(target)
        assert "not a previous etemseg frame store" in refused(capsys, "ingest", raw, target,
                                                               *mode)
        assert tree_digest(target) == kept
    # its own previous output is replaced
    own = tmp_path / "frames.zarr"
    assert main(["--quiet", "ingest", str(raw), str(own), *mode]) == 0
    assert main(["--quiet", "ingest", str(raw), str(own), *mode]) == 0
    assert is_store_of("ingest")(own)


def test_pseudolabel_refuses_its_input_and_other_stores(movie, tmp_path, capsys):
    frames = movie / "frames.zarr"
    before = tree_digest(frames)
    for mode in ([], ["--init"]):
        assert "is also an input" in refused(capsys, "pseudolabel", frames, frames, *mode)
        assert "not a previous etemseg pseudo-label store" in refused(
            capsys, "pseudolabel", movie / "pseudo.zarr", frames, *mode)
    assert tree_digest(frames) == before
    out = tmp_path / "p.zarr"
    for _ in range(2):
        assert main(["--quiet", "pseudolabel", str(frames), str(out)]) == 0


def test_infer_writes_its_stores_and_nothing_else(movie, tmp_path, capsys):
    frames, model = movie / "frames.zarr", movie / "model" / "model.pt"
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["--quiet", "infer", str(frames), str(model), str(folder)]) == 0
    assert main(["--quiet", "infer", str(frames), str(model), str(folder)]) == 0   # rerun
    assert sorted(p.name for p in folder.iterdir()) == ["mask.zarr", "notes.txt", "prob.zarr"]
    assert (folder / "notes.txt").read_text() == "keep me"
    # the old defect: OUT = the movie folder kept only prob/mask; now the frames stay
    movie_copy = tmp_path / "movie"
    movie_copy.mkdir()
    import shutil
    shutil.copytree(frames, movie_copy / "frames.zarr")
    kept = tree_digest(movie_copy / "frames.zarr")
    assert main(["--quiet", "infer", str(movie_copy / "frames.zarr"), str(model),
                 str(movie_copy)]) == 0
    assert tree_digest(movie_copy / "frames.zarr") == kept
    # a foreign folder where a store would go, and the frames store itself, are refused
    clash = tmp_path / "clash"
    (clash / "mask.zarr").mkdir(parents=True)
    (clash / "mask.zarr" / "data.bin").write_bytes(b"x")
    for mode in ([], ["--init"]):
        assert "not a previous etemseg infer-mask store" in refused(
            capsys, "infer", frames, model, clash, *mode)
    assert (clash / "mask.zarr" / "data.bin").read_bytes() == b"x"
    assert not (clash / "prob.zarr").exists()


def test_measure_and_track_outputs_of_the_wrong_kind(movie, tmp_path, capsys):
    frames, masks = movie / "frames.zarr", movie / "pseudo.zarr"
    table = tmp_path / "particles" / "chunk-0.parquet"
    table.parent.mkdir()
    for target in (frames, tmp_path / "notes.csv"):
        if target.suffix == ".csv":
            target.write_text("a,b\n1,2\n")
        kept = tree_digest(target)
        refused(capsys, "measure", frames, masks, target, "--chunk", "0")
        assert tree_digest(target) == kept
    for _ in range(2):          # its own Parquet output is replaced
        assert main(["--quiet", "measure", str(frames), str(masks), str(table),
                     "--chunk", "0"]) == 0
    assert main(["--quiet", "measure", str(frames), str(masks),
                 str(table.parent / "chunk-1.parquet"), "--chunk", "1"]) == 0
    out = tmp_path / "tracks"
    out.mkdir()
    (out / "events.parquet").write_text("my own notes, not a table")
    line = refused(capsys, "track", frames, masks, table.parent, out)
    assert "events.parquet" in line and "not a previous etemseg events table" in line
    assert (out / "events.parquet").read_text() == "my own notes, not a table"
    assert not (out / "trajectories.parquet").exists()
    (out / "events.parquet").unlink()
    for _ in range(2):
        assert main(["--quiet", "track", str(frames), str(masks), str(table.parent),
                     str(out)]) == 0
    assert set(read_table_set(out)) == {"trajectories", "events", "frames"}
    # sintering into a foreign folder is refused
    foreign = tmp_path / "figures"
    foreign.mkdir()
    (foreign / "fig1.png").write_bytes(b"png")
    assert "not a previous etemseg sintering folder" in refused(capsys, "sintering", frames, out,
                                                                foreign)


def test_track_tables_are_one_unit(tmp_path, capsys):
    df = pd.DataFrame({"frame": [0, 1], "x_nm": [1.0, 2.0], "parents": [[1, 2], []]})
    tables = {name: (df, None) for name in ("trajectories", "events", "frames")}
    first = write_table_set(tmp_path, tables, metadata={"movie": "m"})
    assert set(read_table_set(tmp_path)) == set(tables)
    keep = (tmp_path / "events.parquet").read_bytes()
    assert write_table_set(tmp_path, tables, metadata={"movie": "m"}) == first   # by content
    changed = {**tables, "events": (df.assign(x_nm=[1.0, 3.0]), None)}
    second = write_table_set(tmp_path, changed, metadata={"movie": "m"})
    assert first != second
    (tmp_path / "events.parquet").write_bytes(keep)        # a death between two renames
    with pytest.raises(Exception, match="different runs"):
        read_table_set(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporaries


def test_chunk_jobs_check_receipt_and_store_before_working(movie, tmp_path, capsys):
    frames = movie / "frames.zarr"
    pseudo = tmp_path / "p.zarr"
    assert main(["--quiet", "pseudolabel", str(frames), str(pseudo), "--init"]) == 0
    receipt_dir = tmp_path / "receipt.json"
    receipt_dir.mkdir()                                      # a folder where the receipt goes
    assert "--receipt cannot be written" in refused(
        capsys, "pseudolabel", frames, pseudo, "--chunk", "0", "--receipt", receipt_dir)
    assert not list((pseudo / "0").rglob("c/*"))             # the chunk was not written first
    line = refused(capsys, "ingest", movie / "raw", movie / "pseudo.zarr", "--chunk", "0")
    assert "not a frame store written by `etemseg ingest --init`" in line


def test_store_without_its_zarr_json_is_still_recognised(movie, tmp_path, capsys):
    """Snakemake deletes a rule's output (``pseudo.zarr/zarr.json``) before rerunning it."""
    import shutil

    out = shutil.copytree(movie / "pseudo.zarr", tmp_path / "pseudo.zarr")
    (out / "zarr.json").unlink()
    assert main(["--quiet", "pseudolabel", str(movie / "frames.zarr"), str(out), "--init"]) == 0
    assert is_store_of("pseudolabel")(out)
    foreign = tmp_path / "foreign"
    (foreign / "0").mkdir(parents=True)
    (foreign / "0" / "zarr.json").write_text("{}")
    (foreign / "thesis.tex").write_text("x")
    refused(capsys, "pseudolabel", movie / "frames.zarr", foreign, "--init")
    assert (foreign / "thesis.tex").exists()


def test_single_file_products_replace_only_files_of_their_kind(movie, tmp_path, capsys):
    frames, pseudo = movie / "frames.zarr", movie / "pseudo.zarr"
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    kept = tree_digest(frames)
    for target in (frames, notes, pseudo / "0"):               # a store, a text file, an input
        refused(capsys, "score", pseudo, pseudo / "0", "--out", target)
    assert tree_digest(frames) == kept and notes.read_text() == "keep"
    for _ in range(2):                                         # its own kind is replaced
        assert main(["--quiet", "score", str(pseudo), str(pseudo / "0"),
                     "--out", str(tmp_path / "s.json")]) == 0
    capsys.readouterr()
    assert "not a previous etemseg .png file" in refused(
        capsys, "overlay", frames, notes, "--mask", f"p={pseudo}")
    assert main(["--quiet", "overlay", str(frames), str(tmp_path / "o.png"),
                 "--mask", f"p={pseudo}"]) == 0


def test_score_tracks_writes_next_to_the_tables_it_reads(tmp_path, capsys):
    """The workflow writes results/{movie}/{model}/track_scores.json beside the track tables."""
    from etemseg.io.atomic import guard_file_output

    (tmp_path / "trajectories.parquet").write_bytes(b"x")
    guard_file_output(tmp_path / "track_scores.json", suffix=".json",
                      inputs=[tmp_path / "trajectories.parquet"])
    with pytest.raises(OutputPathError, match="is also an input"):
        guard_file_output(tmp_path / "trajectories.parquet", suffix=".parquet",
                          inputs=[tmp_path / "trajectories.parquet"])
