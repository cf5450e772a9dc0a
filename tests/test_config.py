"""One place for defaults: the config schema. Every settings block of the schema names exactly
the fields of the library's dataclass, and every default the schema states equals the library's
and the command line's, so the workflow, a notebook and a hand-typed command agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from etemseg.cli import build_parser
from etemseg.config import check_config
from etemseg.errors import ConfigError

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1]
                         / "workflow/schemas/config.schema.yaml").read_text())["properties"]


def block(*keys: str) -> dict:
    node = SCHEMA
    for key in keys:
        node = node[key] if key in node else node["properties"][key]
    return node


def cli_defaults(command: str) -> dict:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a.default for a in sub._actions}


def settings_blocks():
    from etemseg.nn.inference import InferConfig
    from etemseg.nn.training import TrainConfig
    from etemseg.stages.pseudolabel import PseudoLabelParams
    from etemseg.synth import SynthParams

    return [
        # the model is the rule's wildcard; the window is the config's top-level window_ms
        (("train", "settings"), TrainConfig, {"model", "window_ms"}),
        (("infer", "settings"), InferConfig, set()),
        (("pseudolabel", "params"), PseudoLabelParams, set()),
        (("movies", "additionalProperties", "synthetic"), SynthParams, set()),
    ]


@pytest.mark.parametrize("index", range(4))
def test_every_settings_block_matches_its_dataclass(index):
    keys, cls, not_in_config = settings_blocks()[index]
    props = block(*keys)["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(props) == set(fields) - not_in_config, keys
    for name, prop in props.items():      # defaults the schema states are the library's
        if "default" in prop:
            assert prop["default"] == fields[name].default, (keys, name)


@pytest.mark.parametrize("section, command, options", [
    ("track", "track", {"max_disp_nm": "max_disp_nm", "memory": "memory",
                        "gap_ms": "gap_ms", "persist_ms": "persist_ms",
                        "confirm_ms": "confirm_ms", "reid_ms": "reid_ms",
                        "centroid_only": "centroid_only"}),
    ("measure", "measure", {"min_area_px": "min_area_px"}),
    ("ingest", "ingest", {"codec": "codec", "clevel": "clevel",
                          "zarr_chunk_frames": "zarr_chunk_frames"}),
    ("pseudolabel", "pseudolabel", {"preset": "preset", "method": "method",
                                    "threads": "threads"}),
])
def test_schema_defaults_are_the_command_line_defaults(section, command, options):
    props = block(section)["properties"]
    cli = cli_defaults(command)
    for key, dest in options.items():
        assert props[key]["default"] == cli[dest], (section, key)


def test_movie_defaults_are_the_ingest_defaults():
    movie = block("movies", "additionalProperties")["properties"]
    cli = cli_defaults("ingest")
    assert movie["fps"]["default"] == cli["fps"]
    assert movie["chunk_frames"]["default"] == cli["chunk_frames"]


def test_library_defaults_of_the_reduce_stages():
    import inspect

    from etemseg.stages.measure import measure_chunk
    from etemseg.tracking import LinkParams, link, link_movie

    props = block("track")["properties"]
    for key in ("gap_ms", "persist_ms", "confirm_ms", "reid_ms"):
        assert getattr(LinkParams(), key) == props[key]["default"], key
    for key in ("max_disp_nm", "memory"):
        assert getattr(LinkParams(), key) == props[key]["default"], key
        for fn in (link, link_movie):
            assert inspect.signature(fn).parameters[key].default == props[key]["default"], key
    assert (inspect.signature(measure_chunk).parameters["min_area_px"].default
            == block("measure")["properties"]["min_area_px"]["default"])


@pytest.mark.parametrize("config, words", [
    ({"models": ["unet99-bogus"]}, "models[0]: architecture 'unet99-bogus'"),
    ({"models": ["unet4-norm", "Norm"]}, "same network"),
    ({"train": {"movies": ["b"]}}, "train.movies[0]: 'b' is not a movie"),
    ({"ingest": {"clevel": 12}}, "ingest.clevel"),
    ({"ingest": {"codec": "zstd", "clevel": 23}}, "ingest.clevel"),
    ({"ingest": {"zarr_chunk_frames": 3}}, "does not divide movies.a.chunk_frames"),
])
def test_check_config_names_the_key(config, words):
    with pytest.raises(ConfigError, match=None) as err:
        check_config({"movies": {"a": {"chunk_frames": 10}}, **config})
    assert words in str(err.value)
    check_config({"movies": {"a": {}}, "models": ["unet4-norm", "single-filter"],
                  "ingest": {"codec": "zstd", "clevel": 19}})


def test_window_default_is_the_library_and_command_line_default():
    from etemseg.io.store import DEFAULT_WINDOW_MS

    assert SCHEMA["window_ms"]["default"] == DEFAULT_WINDOW_MS
    assert cli_defaults("pseudolabel")["window_ms"] == DEFAULT_WINDOW_MS
    from etemseg.nn.training import TrainConfig

    assert TrainConfig().window_ms == DEFAULT_WINDOW_MS   # `etemseg train` leaves it unset
