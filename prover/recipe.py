"""Recipes: config dataclasses read from YAML (open-r1 style), where an unknown key is an error
that names the file, not a silently ignored typo."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

R = TypeVar("R", bound="Recipe")


class Recipe:
    """Mixin for `@dataclass` configs: `from_dict`, `from_yaml`, `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | None = None) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            where = f"{source}: " if source else ""
            raise ValueError(f"{where}unknown {cls.__name__} key(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Self:
        d = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d, source=str(path))
