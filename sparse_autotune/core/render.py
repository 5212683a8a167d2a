"""Jinja2 template + config -> CUDA source. Deterministic: same inputs, same bytes."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import jinja2

from ..core.space import Space, split_path


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    from .families import template_folders  # noqa: PLC0415
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in template_folders()]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(space: Space, config: dict, dtype: str, context: dict | None = None, layout: str = "kn") -> str:
    """Render the family's template for one config. Unknown or missing parameters raise.

    context: extra template variables; the pattern-specialised families need their matrix's
    (their host side's `context`), and rendering them without it raises.
    layout: the operand layout, the template's variable `layout` ("kn", or "nk" for a family whose space declares it:
    then its kernel takes one more pointer, `bias`, right after C; core.space, core.families). A config's nk_path (how
    an nk problem is served) is not the template's and is left out."""
    if not space.supports_layout(layout):
        raise ValueError(f"family {space.family} is not written for layout {layout!r} (its layouts: "
                         f"{', '.join(space.layouts)})")
    tpl = _env().get_template(space.template)
    return tpl.render(dtype=dtype, layout=layout, **(context or {}), **split_path(config)[0])


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def clear() -> None:
    """Forget the template environment (the registry's folders changed)."""
    _env.cache_clear()
