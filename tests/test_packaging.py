"""The wheel carries the data folders (templates, spaces, db) and works from an installed location.

The wheel is built once per session from a copy of the checkout in a temporary folder (no build/ or *.egg-info
left in the checkout): `python -m build --wheel --no-isolation` when this environment has the build backend
that pyproject.toml asks for, else an isolated `python -m build --wheel` (needs the package index, here a local
one); skipped when neither can build. ~5 s.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPY = ["pyproject.toml", "README.md", "LICENSE", "sparse_autotune", "variants", "search_spaces", "db"]
REQUIRED = ["sparse_autotune/variants/csr_rowsplit.cu.j2", "sparse_autotune/search_spaces/csr_rowsplit.toml",
            "sparse_autotune/db/README.md"]


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _backend_available() -> bool:
    """setuptools >= 68 and a bdist_wheel (the wheel package, or setuptools >= 70.1 which has its own)."""
    try:
        st = _version_tuple(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        return False
    if st < (68,):
        return False
    try:
        importlib.metadata.version("wheel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return st >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in COPY:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif p.is_file():
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)]
    if _backend_available():
        cmd.insert(4, "--no-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        if "--no-isolation" not in cmd and re.search(r"(?i)could not find a version|no matching distribution|"
                                                     r"network|connection|resolve", tail):
            pytest.skip(f"no build backend here and no index to fetch one from:\n{tail}")
        pytest.fail(f"wheel build failed ({' '.join(cmd)}):\n{tail}")
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in REQUIRED:
        assert required in names, f"{required} missing from {wheel.name}"


def test_wheel_contains_every_family_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for toml in (ROOT / "search_spaces").glob("*.toml"):
        assert f"sparse_autotune/search_spaces/{toml.name}" in names
    for tpl in (ROOT / "variants").glob("*.j2"):
        assert f"sparse_autotune/variants/{tpl.name}" in names
    for mod in (ROOT / "sparse_autotune").glob("*.py"):
        assert f"sparse_autotune/{mod.name}" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_wheel_metadata(wheel):
    zf = zipfile.ZipFile(wheel)
    dist = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = zf.read(f"{dist}/METADATA").decode()
    assert re.search(r"^Name: sparse-autotune$", meta, re.MULTILINE)
    from sparse_autotune import __version__
    assert re.search(rf"^Version: {re.escape(__version__)}$", meta, re.MULTILINE)
    entry_points = zf.read(f"{dist}/entry_points.txt").decode()
    assert re.search(r"^sparse-autotune\s*=\s*sparse_autotune\.commands\.main:main$", entry_points, re.MULTILINE)


def _run_from_site(wheel, tmp_path, code: str) -> subprocess.CompletedProcess:
    """Run `code` with the wheel unpacked into a folder on PYTHONPATH (ahead of the editable install), from a
    folder with no checkout around it, as from site-packages."""
    site = tmp_path / "site"
    if not site.exists():
        zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_unpacked_wheel_is_the_package_imported(wheel, tmp_path):
    proc = _run_from_site(wheel, tmp_path, (
        "import pathlib, sys, sparse_autotune\n"
        "from sparse_autotune import resources\n"
        "site = pathlib.Path(sys.argv[1]).resolve()\n"
        "assert pathlib.Path(sparse_autotune.__file__).resolve().is_relative_to(site), sparse_autotune.__file__\n"
        "assert not (resources._ROOT / 'pyproject.toml').is_file()  # no checkout: the installed-data path is used\n"
        "print('OK')\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


def test_installed_wheel_finds_its_data(wheel, tmp_path):
    """Unpacked elsewhere (as in site-packages, no checkout around it), the package renders from its own data."""
    proc = _run_from_site(wheel, tmp_path, (
        "import pathlib, sys\n"
        "from sparse_autotune.resources import resource_dir\n"
        "from sparse_autotune.core import space, render\n"
        "site = pathlib.Path(sys.argv[1]).resolve()\n"
        "for name in ('variants', 'search_spaces', 'db'):\n"
        "    d = resource_dir(name)\n"
        "    assert d.is_dir() and d.resolve().is_relative_to(site), repr(d)\n"
        "sp = space.get_space('csr_rowsplit')\n"
        "cfg = sp.defaults('fp32', space.problem_env(512, 2048, 256, 1000, 'fp32'))[0]\n"
        "assert 'spmm_kernel' in render.render(sp, cfg, 'fp32')\n"
        "print('OK', len(space.load_spaces()))\n"))
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]
    assert proc.stdout.startswith("OK")
    assert int(proc.stdout.split()[1]) == len(list((ROOT / "search_spaces").glob("*.toml")))
