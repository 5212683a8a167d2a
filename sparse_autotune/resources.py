"""Locate the data folders (variants/, search_spaces/, db/) in a source checkout or an installed wheel."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """Return the folder `name` (one of variants, search_spaces, db)."""
    if name not in ("variants", "search_spaces", "db"):
        raise ValueError(f"unknown resource folder {name!r}")
    candidate = _ROOT / name
    if candidate.is_dir() and (_ROOT / "pyproject.toml").is_file():
        return candidate
    return Path(str(importlib.resources.files(f"sparse_autotune.{name}")))
