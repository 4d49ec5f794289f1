"""The import direction (docs/architecture.md), enforced by import-linter (the contracts live in pyproject.toml)."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubetune

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
    out = " ".join(result.stdout.split())  # lint-imports wraps long lines
    assert (
        "Operator layers: api <- render <- reconcile <- runtime <- handlers <- manager <- cli BROKEN" in out
    )
    assert "never import kopf or a Kubernetes client BROKEN" in out
    assert "The trainer uses kubetune.api and nothing else of the operator BROKEN" in out


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def test_the_layers_cover_every_module_and_the_trainer_contract_every_operator_module():
    """No optional layers, no wildcards, no ignores; the trainer may import kubetune.api only."""
    modules = {m.name for m in pkgutil.iter_modules(kubetune.__path__)}
    contracts = _contracts()
    for contract in contracts.values():
        assert not contract.get("ignore_imports"), contract["name"]
        text = repr(contract)
        assert "(" not in text and "*" not in text, contract["name"]
    layers = next(c for c in contracts.values() if c["type"] == "layers")
    assert layers["exhaustive"] is True and layers["containers"] == ["kubetune"]
    layered = [name.strip() for layer in layers["layers"] for name in layer.split("|")]
    assert sorted(layered) == sorted(modules), "every module of kubetune in exactly one layer"
    trainer = contracts["The trainer uses kubetune.api and nothing else of the operator"]
    assert trainer["source_modules"] == ["kubetune_trainer"]
    forbidden = {
        m.removeprefix("kubetune.") for m in trainer["forbidden_modules"] if m.startswith("kubetune.")
    }
    assert forbidden == modules - {"api"}


def test_a_module_outside_the_layers_breaks_the_contract(tmp_path: Path):
    shutil.copytree(
        REPO / "operator" / "kubetune", tmp_path / "kubetune", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "trainer_image" / "kubetune_trainer", tmp_path / "kubetune_trainer",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "kubetune" / "stray.py").write_text("X = 1\n")
    result = lint_imports(tmp_path, [tmp_path])
    assert result.returncode != 0
    assert "kubetune.stray" in result.stdout + result.stderr
