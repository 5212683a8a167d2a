import pytest

from sparse_autotune.device.gpu import gpu_available

HAS_GPU = gpu_available()


def pytest_collection_modifyitems(config, items):
    """No GPU: the gpu tests are skipped. With pytest-xdist (`-n 2 --dist loadgroup`, README's test command) the gpu
    tests share one worker (one GPU, taken in turn), and the tests of a module-scoped fixture share one worker too, so
    that it is built once."""
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("gpu"))
            if not HAS_GPU:
                item.add_marker(skip)
            continue
        fixturedefs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if any(d.scope == "module" for defs in fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
