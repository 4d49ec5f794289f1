"""The scripts in hack/ (benchmarks, soak) use the repository's harness (tests/support: the local control plane,
`kubetune operator` as a process, the CRDs, the objects; or a suite's own plain helper module, such as
tests/gateway/helpers.py) and nothing else of tests/: never a conftest (pytest's fixtures and hooks), never a
test module, and never pytest itself, not even through a module they import. So a benchmark runs with what
`make cluster-up` runs (`python -m tests.support.controlplane`), without pytest."""

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


def problems(script: Path) -> list[str]:
    """What SCRIPT imports of tests/ that a script may not: test modules, conftests, pytest."""
    found = []
    direct = imported_modules(script)
    tests = sorted(
        m for m in direct if m.split(".")[0] == "tests" and any(p.startswith("test_") for p in m.split("."))
    )
    if tests:
        found.append(f"test modules {tests}")
    reached = closure(direct)
    conftests = sorted(m for m in reached if m.split(".")[-1] == "conftest")
    if conftests:
        found.append(f"conftests {conftests}")
    pytest = sorted(m for m in reached if m.split(".")[0] in ("pytest", "_pytest"))
    if pytest:
        found.append(f"pytest ({pytest})")
    return found


def test_hack_scripts_import_only_the_harness_of_tests():
    assert SCRIPTS, "no scripts found in hack/"
    wrong = {script.name: found for script in SCRIPTS if (found := problems(script))}
    assert not wrong, f"scripts reaching what only pytest may run: {wrong}"


def test_the_check_sees_test_modules_conftests_and_pytest(tmp_path: Path):
    """A script importing a test module, a conftest, or the pytest plugin of tests/support is refused (a check
    that cannot fail is no check); one importing only the harness is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tests.unit.test_queue import Gate\nfrom tests.operator.conftest import FTJ\n")
    assert [p.split(" ")[0] for p in problems(bad)] == ["test", "conftests", "pytest"]
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from tests.support import cluster\n")  # tests/support/cluster.py: the pytest plugin
    assert [p.split(" ")[0] for p in problems(plugin)] == ["pytest"]
    good = tmp_path / "good.py"
    good.write_text("from tests.support import controlplane\nfrom tests.support.operator import Operator\n")
    assert problems(good) == []
