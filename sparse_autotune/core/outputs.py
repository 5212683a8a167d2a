"""A benchmark's result files: STEM.json (the whole document), STEM.md (its Markdown) and STEM.png (its plot, where one
is drawn). The benchmarks of the other operators (ops.sddmm_bench, ops.conv_bench, runtime.finetune_bench) write them
through write_doc."""
from __future__ import annotations

import json
from pathlib import Path


def write_doc(stem, doc: dict, md_lines: list[str], plot=None) -> list[Path]:
    """STEM.json (doc), STEM.md (md_lines) and, where plot(doc, path) says it drew one, STEM.png; the files written."""
    stem = Path(stem)
    files = [Path(f"{stem}.json"), Path(f"{stem}.md")]
    files[0].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    files[1].write_text("\n".join(md_lines) + "\n")
    if plot is not None and plot(doc, Path(f"{stem}.png")):
        files.append(Path(f"{stem}.png"))
    return files
