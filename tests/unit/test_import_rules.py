"""DESIGN.md's import direction, enforced by import-linter (the contracts live in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .helpers import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_repository_keeps_its_import_contracts():
    result = lint_imports(REPO, [REPO / "operator", REPO / "trainer_image"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_catch_violations(tmp_path: Path):
    """A copy of the packages with forbidden imports added: every contract must break."""
    shutil.copytree(
        REPO / "operator" / "kubetune", tmp_path / "kubetune", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "trainer_image" / "kubetune_trainer", tmp_path / "kubetune_trainer",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "kubetune" / "api" / "_probe.py").write_text(
        "import kopf  # noqa\nimport kubetune.cli  # noqa\n"
    )
    (tmp_path / "kubetune_trainer" / "_probe.py").write_text("import kubetune.crdgen  # noqa\n")
    result = lint_imports(tmp_path, [tmp_path])
    assert result.returncode != 0
    out = result.stdout
    assert "Operator layers: api <- render <- reconcile <- handlers/cli BROKEN" in out
    assert "never import kopf or a Kubernetes client BROKEN" in out
    assert "The trainer uses kubetune.api and nothing else of the operator BROKEN" in out
