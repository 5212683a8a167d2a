"""The package's architecture, read from its source on the CPU (ast; nothing is imported).

- Every `import` and `from ... import` in sparse_autotune/**/*.py, those inside functions included, relative ones
  resolved, a name taken from a package's __init__ followed to the module it re-exports. The parts are the
  subpackages (core, device, store, tuning, runtime, commands) and the base modules (errors, resources); the root
  package itself (its __version__) is the parent of every module and counts for none.
- No cycle between parts; a subpackage imports only the parts its __init__ docstring's "May import: ..." allows
  (errors and resources always); the base modules import no other part.
- No block of BLOCK or more consecutive lines (blanks, comments and import statements left out, whitespace
  normalised) repeated across modules.
The checkers are plain functions over a package folder, tried on a tiny planted package too.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sparse_autotune"
BASE = ("errors", "resources")  # any part may import them; they import no other part
BLOCK = 6
EVERYTHING = "*"

# Disallowed imports that exist today, each (importing module, imported module): reported to the owners, to be
# fixed in their files. A new violation fails; so does an entry here that no longer occurs (remove it then).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # (module, target) pairs allowed for now: none


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted and absolute
    path: Path
    line: int

    def where(self) -> str:
        try:
            rel = self.path.relative_to(ROOT)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"


def modules(pkg: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package in folder `pkg` (a package is its __init__.py)."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        if any(p == "__pycache__" for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _from_base(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute module of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    pkg = module.split(".") if _is_package(path) else module.split(".")[:-1]
    if level - 1 >= len(pkg):
        raise ValueError(f"{path}: relative import beyond the top-level package")
    pkg = pkg[: len(pkg) - (level - 1)]
    return ".".join(pkg + ([name] if name else []))


def _bindings(tree: ast.AST, module: str, path: Path) -> dict[str, str]:
    """Names bound at the top level of a package's __init__ by `from X import name`: name -> module X."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = _from_base(module, path, node.level, node.module)
            for alias in node.names:
                out[alias.asname or alias.name] = base
    return out


def read_imports(pkg: Path) -> list[Import]:
    """Every import of the package in folder `pkg` that names a module of the same package, resolved."""
    mods = modules(pkg)
    top = pkg.name
    trees = {m: ast.parse(p.read_text(), filename=str(p)) for m, p in mods.items()}
    exports = {m: _bindings(trees[m], m, mods[m]) for m in mods if _is_package(mods[m])}

    def inside(target: str) -> bool:
        return target == top or target.startswith(top + ".")

    out = []
    for m, tree in trees.items():
        path = mods[m]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if inside(alias.name):
                        out.append(Import(m, alias.name, path, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = _from_base(m, path, node.level, node.module)
                if not inside(base):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:
                        target = sub  # a submodule
                    elif alias.name in exports.get(base, {}):
                        target = exports[base][alias.name]  # a name the package's __init__ imported from there
                    else:
                        target = base
                    if inside(target):
                        out.append(Import(m, target, path, node.lineno))
    return list(dict.fromkeys(out))  # `from x import a, b`: one import of x


def part_of(module: str, pkg: Path) -> str | None:
    """The part a module belongs to: a subpackage's or base module's name; None for the root package itself and
    for top-level modules that are not base modules (__main__)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if (pkg / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in BASE else None


def subpackages(pkg: Path) -> list[str]:
    return sorted(p.parent.name for p in pkg.glob("*/__init__.py"))


def allowed_imports(pkg: Path) -> dict[str, set[str]]:
    """Each subpackage's "May import: a, b, c." list (EVERYTHING for "every other subpackage"); ValueError where a
    docstring has none or names an unknown part. Base modules: none."""
    subs = subpackages(pkg)
    known = set(subs) | set(BASE)
    out = {b: set() for b in BASE}
    for sub in subs:
        doc = ast.get_docstring(ast.parse((pkg / sub / "__init__.py").read_text())) or ""
        m = re.search(r"May import:\s*(.+?)\.?\s*$", " ".join(doc.split()))
        if not m:
            raise ValueError(f"{sub}/__init__.py: the docstring does not say 'May import: ...'")
        names = set()
        for word in re.split(r",|\band\b", m.group(1)):
            word = word.strip().lower()
            if not word:
                continue
            if word.startswith(("every", "any", "all")):
                names.add(EVERYTHING)
            elif word in known:
                names.add(word)
            else:
                raise ValueError(f"{sub}/__init__.py: 'May import' names {word!r}, not a part of the package")
        out[sub] = names
    return out


def edges(pkg: Path, imports: list[Import] | None = None) -> dict[tuple[str, str], list[Import]]:
    """(importing part, imported part) -> the imports that make that edge, between different parts."""
    out = defaultdict(list)
    for imp in read_imports(pkg) if imports is None else imports:
        a, b = part_of(imp.module, pkg), part_of(imp.target, pkg)
        if a and b and a != b:
            out[(a, b)].append(imp)
    return dict(out)


def cycles(pkg: Path) -> list[str]:
    """Each strongly connected group of parts (an import cycle), as 'a -> b -> a' with the imports of each edge."""
    es = edges(pkg)
    graph = defaultdict(set)
    for a, b in es:
        graph[a].add(b)
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(graph) | {b for bs in graph.values() for b in bs}):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        # one cycle through the group: a path from its first part back to it, inside the group
        start = group[0]
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in group)
            back = start if start in nxt and len(path) > 1 else None
            step = back or next((w for w in nxt if w not in seen), None)
            if step is None:  # dead end inside the group: go to any member (the group is strongly connected)
                step = nxt[0]
            path.append(step)
            if step == start or step in seen:
                path = path[path.index(step):]
                break
            seen.add(step)
        detail = "; ".join(f"{a} -> {b}: " + ", ".join(f"{i.where()} imports {i.target}" for i in es[(a, b)][:3])
                           for a, b in zip(path, path[1:]))
        out.append(" -> ".join(path) + f"  ({detail})")
    return out


def disallowed(pkg: Path) -> list[Import]:
    """The imports of a part that its 'May import' list (or the base modules' rule) does not allow."""
    allowed = allowed_imports(pkg)
    out = []
    for (a, b), imps in sorted(edges(pkg).items()):
        ok = allowed.get(a, {EVERYTHING})
        if b in BASE and a not in BASE:
            continue
        if EVERYTHING in ok or b in ok:
            continue
        out.extend(imps)
    return out


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the lines that count: no blank lines, comments or import statements."""
    text = path.read_text()
    lines = text.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    skip = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    out = []
    for i, line in enumerate(lines, 1):
        norm = " ".join(line.split())
        if norm and i not in skip:
            out.append((i, norm))
    return out


def repeated_blocks(pkg: Path, size: int = BLOCK) -> list[str]:
    """Blocks of `size` or more consecutive counted lines found in two or more modules, as
    'a.py:L1-L2 = b.py:L3-L4 (n lines): first line'."""
    seqs = {m: _code_lines(p) for m, p in modules(pkg).items()}
    where = defaultdict(list)
    for m, seq in seqs.items():
        for i in range(len(seq) - size + 1):
            where[tuple(t for _, t in seq[i:i + size])].append((m, i))
    pairs = defaultdict(set)  # (module a, module b) -> {(index in a, index in b)} of matching windows
    for occ in where.values():
        mods = {m for m, _ in occ}
        if len(mods) < 2:
            continue
        for ma, ia in occ:
            for mb, ib in occ:
                if ma < mb:
                    pairs[(ma, mb)].add((ia, ib))
    out = []
    for (ma, mb), starts in sorted(pairs.items()):
        for ia, ib in sorted(starts):
            if (ia - 1, ib - 1) in starts:
                continue  # inside a run already reported
            n = 1
            while (ia + n, ib + n) in starts:
                n += 1
            a, b = seqs[ma], seqs[mb]
            last = size + n - 2
            out.append(f"{modules(pkg)[ma].relative_to(pkg.parent)}:{a[ia][0]}-{a[ia + last][0]} = "
                       f"{modules(pkg)[mb].relative_to(pkg.parent)}:{b[ib][0]}-{b[ib + last][0]} "
                       f"({last + 1} lines): {a[ia][1][:80]}")
    return out


# ---- the package ----

def test_every_subpackage_says_what_it_may_import():
    allowed = allowed_imports(PACKAGE)
    subs = subpackages(PACKAGE)
    assert {"core", "device", "store", "tuning", "runtime", "commands"} <= set(subs)
    assert all(s in allowed for s in subs)
    assert allowed["core"] == set(BASE)  # the bottom stage imports nothing else of the package


def test_imports_are_read_inside_functions_and_relative_ones_resolved():
    imps = read_imports(PACKAGE)
    assert len(imps) > 50
    assert all(i.target.startswith("sparse_autotune") for i in imps)
    # commands/main.py imports its subcommands' dependencies inside functions (PLC0415): those count
    from_main = {i.target for i in imps if i.module == "sparse_autotune.commands.main"}
    assert any(t.startswith("sparse_autotune.tuning.") for t in from_main), from_main


def test_no_import_cycle_between_subpackages():
    found = cycles(PACKAGE)
    assert not found, "import cycles between parts of the package:\n" + "\n".join(found)


def test_subpackages_import_only_what_their_docstring_allows():
    bad = disallowed(PACKAGE)
    new = [i for i in bad if (i.module, i.target) not in KNOWN_VIOLATIONS]
    fixed = KNOWN_VIOLATIONS - {(i.module, i.target) for i in bad}
    assert not new, "imports that the importing subpackage's 'May import' does not allow:\n" + "\n".join(
        f"{i.where()}: {i.module} imports {i.target}" for i in new)
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_no_block_of_six_lines_repeated_across_modules():
    found = repeated_blocks(PACKAGE)
    assert not found, f"blocks of {BLOCK}+ lines repeated across modules:\n" + "\n".join(found)


# ---- the checkers on a planted package ----

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


DUP = "".join(f"    total = total + {i} * x  # step {i}\n" for i in range(BLOCK))


def _planted(tmp_path: Path, **extra: str) -> Path:
    files = {
        "pkg/__init__.py": '"""Top."""\n__version__ = "1"\nfrom .low.a import f\n',
        "pkg/errors.py": '"""Errors."""\n',
        "pkg/resources.py": '"""Resources."""\n',
        "pkg/low/__init__.py": '"""The bottom. May import: errors, resources."""\n',
        "pkg/low/a.py": "from ..errors import *\n\ndef f(x):\n    total = 0\n    return total\n",
        "pkg/mid/__init__.py": '"""Middle. May import: low,\n errors and resources."""\n',
        "pkg/mid/b.py": "from .. import __version__\nfrom ..low import a\nimport pkg.low.a as again\n",
        "pkg/top/__init__.py": '"""Top. May import: every other subpackage."""\n',
        "pkg/top/c.py": "def g():\n    from ..mid.b import again\n    from .. import f\n    return again, f\n",
    }
    files.update(extra)
    return _write(tmp_path, files)


def test_checkers_pass_a_clean_package(tmp_path):
    pkg = _planted(tmp_path)
    imps = {(i.module, i.target) for i in read_imports(pkg)}
    assert ("pkg.mid.b", "pkg.low.a") in imps  # `from ..low import a`: the submodule
    assert ("pkg.mid.b", "pkg") in imps  # __version__: the root package itself, which counts for no part
    assert ("pkg.top.c", "pkg.mid.b") in imps  # inside a function
    assert ("pkg.top.c", "pkg.low.a") in imps  # `from .. import f`: followed to what the root re-exports
    assert set(edges(pkg)) == {("low", "errors"), ("mid", "low"), ("top", "mid"), ("top", "low")}
    assert allowed_imports(pkg) == {"errors": set(), "resources": set(), "low": {"errors", "resources"},
                                    "mid": {"low", "errors", "resources"}, "top": {EVERYTHING}}
    assert cycles(pkg) == []
    assert disallowed(pkg) == []
    assert repeated_blocks(pkg) == []


def test_checkers_find_a_planted_cycle(tmp_path):
    # low imports top inside a function (relative, two levels up): low -> top -> mid -> low
    pkg = _planted(tmp_path, **{"pkg/low/a.py": "def f(x):\n    from ..top import c\n    return c\n"})
    found = cycles(pkg)
    assert len(found) == 1
    assert found[0].startswith("low -> top -> ")
    assert "pkg/low/a.py:2 imports pkg.top.c" in found[0]


def test_checkers_find_a_planted_disallowed_import(tmp_path):
    pkg = _planted(tmp_path, **{"pkg/mid/d.py": "def h():\n    import pkg.top.c\n",
                                "pkg/errors.py": "from .low import a\n"})
    bad = {(i.module, i.target, i.line) for i in disallowed(pkg)}
    assert bad == {("pkg.mid.d", "pkg.top.c", 2), ("pkg.errors", "pkg.low.a", 1)}


def test_checkers_reject_a_missing_or_unknown_may_import(tmp_path):
    pkg = _planted(tmp_path, **{"pkg/low/__init__.py": '"""The bottom."""\n'})
    with pytest.raises(ValueError, match="low/__init__.py"):
        allowed_imports(pkg)
    pkg = _planted(tmp_path, **{"pkg/low/__init__.py": '"""The bottom. May import: errors, nowhere."""\n'})
    with pytest.raises(ValueError, match="nowhere"):
        allowed_imports(pkg)


def test_checkers_find_a_planted_repeated_block(tmp_path):
    body = "def f(x):\n    total = 0\n" + DUP + "    return total\n"
    other = "import os\n\n\ndef g(x):\n    # same work\n    total = 0\n\n" + DUP.replace("  #", "#").replace(
        "    total", "    total ") + "    return total * 2\n"
    pkg = _planted(tmp_path, **{"pkg/low/a.py": body, "pkg/mid/e.py": other})
    found = repeated_blocks(pkg)
    assert len(found) == 1, found
    assert found[0].startswith(f"pkg/low/a.py:2-{2 + BLOCK} = pkg/mid/e.py:6-{7 + BLOCK} ({BLOCK + 1} lines)")
    # five lines are not a block; import statements and comments do not count
    five = "".join(DUP.splitlines(True)[:BLOCK - 1])
    pkg = _planted(tmp_path, **{"pkg/low/a.py": "def f(x):\n    import os\n    import sys\n" + five,
                                "pkg/mid/e.py": "def g(x):\n    import os\n    # x\n    import sys\n" + five})
    assert repeated_blocks(pkg) == []
