"""The linking parameters, checked in one place (drift estimation and the linker share them)."""

from __future__ import annotations

from dataclasses import dataclass

from etemseg.errors import ConfigError, is_int, is_number

__all__ = ["LinkParams"]


@dataclass(frozen=True)
class LinkParams:
    """Linking parameters (see :mod:`etemseg.tracking.link` for how each is used).

    Attributes
    ----------
    max_disp_nm : float
        Largest drift-corrected displacement of a particle between two present frames, nm, used by
        the centroid fallbacks (Brownian steps at 400 fps are ~0.1 nm).  Default 1.0.
    min_overlap : float
        Shared area, as a fraction of the smaller particle, that makes an overlap edge (0..1].
        Default 0.2.
    min_absorbed_volume : float
        Smallest volume fraction of the merged particle that a weakly overlapping particle must
        hold to be counted as a coalescence parent instead of a vanish.  Default 0.03 (about a
        third of the merged diameter; smaller ones drown in the noise of the merged volume).
    memory : int
        Present frames a particle may be missing and keep its id in the frame-pair linker
        (0 = no bridging).  Default 3.  Superseded by ``gap_ms`` (physical time, a diffusive
        gate, volume continuity), which bridges longer gaps on top; kept for compatibility.
    gap_ms : float
        Longest time a particle may stay undetected (below the detection limit) and keep its id,
        ms; a vanish is only reported when it stays gone longer.  0 = off.  Default 50.
    persist_ms : float
        How long a merged body must persist (not split again) to be a coalescence, and a split's
        pieces to stay apart to be a split, ms.  0 = off.  Default 25.
    confirm_ms : float
        How long a new trajectory must last to be confirmed (hysteresis in time): shorter ones
        report no appear / vanish and are no coalescence parents, ms.  0 = off.  Default 10.
    reid_ms : float
        Longest time a lost particle (below the detection limit, or out of view across the frame
        edge) may be re-identified after, ms: by its drift-corrected (sample-frame) position
        within a diffusive gate measured on the movie's own tracks, and its size, unless the
        movie's ripening law says it is gone by then.  Longer than ``gap_ms``, stricter gate;
        part of the gap closing (off with ``gap_ms = 0``).  0 = off (only ``gap_ms``).
        Default 1000.
    min_diameter_nm : float
        Smallest equivalent diameter, nm, a trajectory must reach at least once off the frame
        border to be *trusted* (look like a particle): an untrusted trajectory (a spurious
        component, a particle only ever seen at the detection limit) stays in the tables,
        flagged ``trusted = False``, but reports no appear / vanish and is no coalescence
        parent.  A trajectory only ever seen touching the border has no usable size and is
        trusted.  0 = off.  Default 1.6.
    trust_ms : float
        How long (first to last detection) a trajectory must last for its appear / vanish to be
        reported, ms, however it began (``confirm_ms`` only covers trajectories born by an
        appear / enter, and also removes coalescence parents).  0 = off.  Default 25.
    """

    max_disp_nm: float = 1.0
    min_overlap: float = 0.2
    min_absorbed_volume: float = 0.03
    memory: int = 3
    gap_ms: float = 50.0
    persist_ms: float = 25.0
    confirm_ms: float = 10.0
    reid_ms: float = 1000.0
    min_diameter_nm: float = 1.6
    trust_ms: float = 25.0

    def validate(self) -> None:
        """Raise :class:`~etemseg.errors.ConfigError` naming the first bad field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"track.{name}: {why} (got {getattr(self, name)!r})")

        if not is_number(self.max_disp_nm) or self.max_disp_nm <= 0:
            raise bad("max_disp_nm", "must be a finite number > 0")
        if not is_number(self.min_overlap) or not 0 < self.min_overlap <= 1:
            raise bad("min_overlap", "must be in (0, 1]")
        if not is_number(self.min_absorbed_volume) or not 0 <= self.min_absorbed_volume <= 1:
            raise bad("min_absorbed_volume", "must be in [0, 1]")
        if not is_int(self.memory) or self.memory < 0:
            raise bad("memory", "must be an integer >= 0")
        if not is_number(self.min_diameter_nm) or self.min_diameter_nm < 0:
            raise bad("min_diameter_nm", "must be a finite number >= 0 (nm)")
        for name in ("gap_ms", "persist_ms", "confirm_ms", "reid_ms", "trust_ms"):
            v = getattr(self, name)
            if not is_number(v) or v < 0:
                raise bad(name, "must be a finite number >= 0 (ms)")
