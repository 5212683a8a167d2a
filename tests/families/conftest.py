"""The family tests import the shared test doubles of tests/ (fakes.py). The CPU tests that run a compiler (nvcc's
covering samples, g++ emulations of a kernel, the launch-signature checks, the render-every-config sweeps) for a
family that is not enabled by default are the heavy tier: left out of the default run (pyproject's addopts:
-m "not heavy"), run with `pytest -m heavy` after changing such a family (~10 minutes on 2 cores). A family that gets
enabled brings its tests back into the default run by itself."""
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMPILER_TESTS = re.compile(r"compile|emulated_on_the_cpu|nvcc|launch_matches|every_(feasible_)?config_renders")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(config, items):
    from sparse_autotune.core.families import all_families
    here, families = Path(__file__).resolve().parent, all_families()
    for item in items:  # the hook sees the whole session's items: only this folder's are the families'
        family = getattr(item.module, "FAMILY", None) if here in Path(item.path).resolve().parents else None
        if family is None or "gpu" in item.keywords or not COMPILER_TESTS.search(item.name):
            continue
        if not families[family].space.enabled:
            item.add_marker(pytest.mark.heavy)
