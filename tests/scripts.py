"""Load one of the project's scripts (bench/*.py, examples/*/*.py) as a module for a test: by path, under a name of
its own (not the file's stem on sys.path, which another script may share), registered in sys.modules (a script's
dataclasses look their module up there) and loaded once per process."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(relpath: str, name: str):
    """The script at ROOT / relpath as module `name`."""
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return mod
