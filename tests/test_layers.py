"""The layering rule: arrows point down, diffjob -> systems (audiodiff, textdiff) -> diffcore.

Every import in the project's packages is read from the source with ``ast`` (module level, inside
functions and under ``if TYPE_CHECKING``, relative ones resolved), so a lazy import cannot hide a wrong
arrow. The core must not name a system even in a string (a ``importlib.import_module("audiodiff...")``
is an import too); comments may.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"diffcore": ROOT / "shared" / "diffcore", "diffjob": ROOT / "shared" / "diffjob",
            "audiodiff": ROOT / "audiodiff", "textdiff": ROOT / "textdiff"}
# which of the project's packages each may import (itself always)
ALLOWED = {"diffcore": set(), "audiodiff": {"diffcore"}, "textdiff": {"diffcore"},
           "diffjob": {"diffcore", "audiodiff", "textdiff"}}
SYSTEMS = ("audiodiff", "textdiff")


def _module_name(package: str, path: Path) -> list[str]:
    rel = path.relative_to(PACKAGES[package]).with_suffix("")
    parts = [package, *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(package: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, wherever it sits."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(package, path)
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _files(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


@pytest.mark.parametrize("package", list(PACKAGES))
def test_imports_point_down(package):
    wrong = []
    for path in _files(package):
        for line, name in imports_of(package, path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} imports {name}")
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing'} of the project:\n" + \
        "\n".join(wrong)


def test_the_core_names_no_system_outside_comments():
    named = []
    for path in _files("diffcore"):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.COMMENT:
                continue
            for system in SYSTEMS:
                if system in tok.string:
                    named.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string.strip()[:80]}")
    assert not named, "the core names a system (move the code to the system or to diffjob):\n" + "\n".join(named)


def test_the_scanner_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checks above would catch the wrong arrows they exist for."""
    pkg = tmp_path / "diffcore"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "mod.py").write_text("def f():\n    from audiodiff.mel import MelConfig\n    from ..x import y\n")
    monkeypatch.setitem(PACKAGES, "diffcore", pkg)
    names = [n for _, n in imports_of("diffcore", pkg / "sub" / "mod.py")]
    assert names == ["audiodiff.mel", "diffcore.x"]
    with pytest.raises(AssertionError, match="audiodiff.mel"):
        test_imports_point_down("diffcore")


def test_recipes_ship_inside_diffjob():
    from diffjob.demo import default_recipes

    assert (default_recipes() / "vocoder" / "tiny.yaml").is_file()
    assert default_recipes().resolve() == (ROOT / "recipes").resolve()
