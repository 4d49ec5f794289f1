"""The scripts in hack/ (benchmarks, soak) use the repository's harness (tests/support: the local control plane,
`kubetune operator` as a process, the CRDs, the objects) and nothing else of tests/: never a conftest (pytest's
fixtures and hooks) and never pytest itself, not even through a tests.support module they import. So a
benchmark runs with what `make cluster-up` runs (`python -m tests.support.controlplane`), without pytest."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO


def imported_modules(path: Path) -> set[str]:
    """Every module PATH imports (absolute names; `from X import a` also counts X.a, which may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str) -> Path | None:
    """The file of a module of this repository (tests.*, hack.*), None for anything else."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(start: set[str]) -> set[str]:
    """START and every repository module (tests.*, hack.*) they import, transitively, with the outside
    modules they import."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name) if name.split(".")[0] in ("tests", "hack") else None
        if path is not None:
            todo.extend(imported_modules(path) - seen)
    return seen


SCRIPTS = sorted((REPO / "hack").glob("*.py"))


def test_hack_scripts_import_only_the_harness_of_tests():
    assert SCRIPTS, "no scripts found in hack/"
    for script in SCRIPTS:
        from_tests = {m for m in imported_modules(script) if m.split(".")[0] == "tests"}
        # `from tests.support import controlplane` names the package and its module: both are the harness.
        wrong = sorted(m for m in from_tests if m != "tests.support" and not m.startswith("tests.support."))
        assert not wrong, f"{script.name} imports {wrong}: only tests.support is the harness scripts may use"
        reached = closure(imported_modules(script))
        conftests = sorted(m for m in reached if m.split(".")[-1] == "conftest")
        assert not conftests, f"{script.name} reaches {conftests}"
        pytest = sorted(m for m in reached if m.split(".")[0] in ("pytest", "_pytest"))
        assert not pytest, f"{script.name} reaches {pytest} (through {sorted(from_tests)})"


def test_the_check_sees_a_conftest_and_pytest(tmp_path: Path):
    """The helpers above find what they must refuse (a check that cannot fail is no check)."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import os\nfrom tests.operator.conftest import FTJ\nfrom tests.support import cluster\n"
    )
    found = imported_modules(script)
    assert {"tests.operator.conftest", "tests.support.cluster"} <= found
    reached = closure(found)
    assert "pytest" in reached  # tests/support/cluster.py is the pytest plugin
