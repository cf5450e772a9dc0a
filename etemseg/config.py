"""Cross-checks of a workflow configuration that a JSON schema cannot express.

The schema (``workflow/schemas/config.schema.yaml``) checks each key on its own;
:func:`check_config` checks keys against each other and against the library (architecture names,
codec levels, the movies that train), so a bad config fails while the workflow is planned, before
the first job, with the key named. Imports nothing heavy (no torch, no numba): it runs on every
``snakemake -n``.
"""

from __future__ import annotations

from etemseg.nn.architectures import canonical_name, parse_arch
from etemseg.errors import ConfigError
from etemseg.io.store import DEFAULT_CLEVEL, DEFAULT_CODEC, compressors_for
from etemseg.scales import check_pixel_size

def check_config(config: dict) -> None:
    """Cross-check a schema-validated workflow config; raise :class:`ConfigError` naming the key.

    - every entry of ``models`` is a known architecture, and no two name the same network;
    - ``train.movies`` lists only configured movies;
    - ``ingest.clevel`` suits ``ingest.codec``;
    - ``ingest.zarr_chunk_frames`` divides every movie's ``chunk_frames``;
    - every pixel size is plausible (:func:`etemseg.scales.check_pixel_size`: nm, not um or pm).
    """
    movies = config.get("movies") or {}
    seen = {}
    for i, name in enumerate(config.get("models") or []):
        try:
            canonical = canonical_name(parse_arch(name))
        except ConfigError as exc:
            raise ConfigError(f"models[{i}]: {exc}") from None
        if canonical in seen:
            raise ConfigError(f"models[{i}]: {name!r} is the same network as {seen[canonical]!r} "
                              f"({canonical}); list it once")
        seen[canonical] = name
    train_movies = (config.get("train") or {}).get("movies") or []
    for i, movie in enumerate(train_movies):
        if movie not in movies:
            raise ConfigError(f"train.movies[{i}]: {movie!r} is not a movie of this config "
                              f"(movies: {', '.join(sorted(movies))})")
    ingest = config.get("ingest") or {}
    try:
        compressors_for(ingest.get("codec", DEFAULT_CODEC), ingest.get("clevel", DEFAULT_CLEVEL))
    except ConfigError as exc:
        raise ConfigError(f"ingest.{exc}") from None
    zcf = ingest.get("zarr_chunk_frames")
    for name, movie in movies.items():
        for key, value in (("pixel_size_nm", (movie or {}).get("pixel_size_nm")),
                           ("synthetic.pixel_size_nm",
                            ((movie or {}).get("synthetic") or {}).get("pixel_size_nm"))):
            if value is not None:
                check_pixel_size(value, f"movies.{name}.{key}")
        chunk = int((movie or {}).get("chunk_frames", 400))
        if zcf and chunk % int(zcf):
            raise ConfigError(f"ingest.zarr_chunk_frames: {zcf} does not divide "
                              f"movies.{name}.chunk_frames ({chunk})")
