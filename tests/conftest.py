import pytest

from sparse_autotune.device.gpu import gpu_available

HAS_GPU = gpu_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook (a run without xdist never calls it)
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (README's and CI's test command, with --dist loadfile: a file's tests and its module fixtures share one
    worker): one worker where a GPU is present (the GPU tests take it in turn), else one a core, at most 4."""
    import os
    return 1 if HAS_GPU else max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.fixture(autouse=True)
def _no_shipped_databases(request, monkeypatch):
    """Tests see only the databases they make: the ones shipped in db/ are left out of lookup's search path
    (a test marked `shipped_db` keeps them). Lookup's in-process cache starts and ends empty for every test."""
    import importlib
    lk = importlib.import_module("sparse_autotune.store.lookup")  # the module (the package exports the function)
    if "shipped_db" not in request.keywords:
        monkeypatch.setattr(lk, "shipped_databases", lambda: ())
        monkeypatch.setenv("SPARSE_AUTOTUNE_NO_SHIPPED_DB", "1")  # for the CLI run in subprocesses
    lk.lookup.cache_clear()
    yield
    lk.lookup.cache_clear()
