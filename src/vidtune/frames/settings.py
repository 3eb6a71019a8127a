"""Frame settings: the ``frames`` block of the config (``definitions.frames`` in the schema) as a typed record."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vidtune.config import schema_defaults
from vidtune.errors import ConfigError

POLICIES = ("uniform", "fps")
BACKENDS = ("pyav", "ffmpeg")
_DEFAULTS = schema_defaults("frames")  # the schema is the one place defaults are written


@dataclasses.dataclass(frozen=True)
class FrameSettings:
    policy: str = _DEFAULTS["policy"]
    num_frames: int = _DEFAULTS["num_frames"]
    fps: float = _DEFAULTS["fps"]
    max_frames: int = _DEFAULTS["max_frames"]
    min_frames: int = _DEFAULTS["min_frames"]
    short_side: int = _DEFAULTS["short_side"]
    jpeg_quality: int = _DEFAULTS["jpeg_quality"]
    backend: str = _DEFAULTS["backend"]
    timeout_s: float = _DEFAULTS["timeout_s"]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "FrameSettings":
        """Build settings from a config dict; unknown keys and bad values raise :class:`ConfigError`."""
        cfg = dict(cfg or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key(s) in frames: {', '.join(unknown)}", record="frames",
                              fix=f"use only {', '.join(fields)}")
        values = {}
        for name, value in cfg.items():
            kind = type(fields[name].default)
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or isinstance(value, bool):
                raise ConfigError(f"frames.{name} must be of type {kind.__name__}, got {value!r}", record="frames")
            values[name] = kind(value)
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        problems = []
        if self.policy not in POLICIES:
            problems.append(f"policy must be one of {', '.join(POLICIES)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {', '.join(BACKENDS)}")
        for name in ("num_frames", "max_frames", "min_frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.short_side < 16:
            problems.append("short_side must be at least 16")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("jpeg_quality must be between 1 and 100")
        if self.fps <= 0 or self.timeout_s <= 0:
            problems.append("fps and timeout_s must be positive")
        if problems:
            raise ConfigError("; ".join(problems), record="frames")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def manifest_fields(self) -> dict:
        """Every setting but the decode timeout: a job limit that reaches extraction through the rule's
        resources, so changing it leaves the manifests as they are."""
        fields = self.as_dict()
        del fields["timeout_s"]
        return fields

    def output_fields(self) -> dict:
        """The settings that determine the extracted frames (what a cache key must include).

        The timeout only decides whether a slow video is given up, and the count fields of the other
        policy are unused, so neither invalidates cached frames. The backend is included: both pick the
        same frames, but their colour conversions are different builds of FFmpeg.
        """
        fields = self.manifest_fields()
        unused = ("fps", "max_frames") if self.policy == "uniform" else ("num_frames",)
        for name in unused:
            del fields[name]
        return fields
