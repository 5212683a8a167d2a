"""Jinja2 template + config -> CUDA source. Deterministic: same inputs, same bytes."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import jinja2

from ..core.space import Space


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    from .families import template_folders  # noqa: PLC0415
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in template_folders()]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(space: Space, config: dict, dtype: str, context: dict | None = None) -> str:
    """Render the family's template for one config. Unknown or missing parameters raise.

    context: extra template variables; the pattern-specialised families need their matrix's
    (their host side's `context`), and rendering them without it raises."""
    tpl = _env().get_template(space.template)
    return tpl.render(dtype=dtype, **(context or {}), **config)


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def clear() -> None:
    """Forget the template environment (the registry's folders changed)."""
    _env.cache_clear()
