"""The image's entrypoint, without Docker: build the kubetune wheel from exactly what the Dockerfile copies,
install it into a fresh venv the way the Dockerfile does (`pip install -c constraints.txt .[trainer]`,
offline: every dependency must already be satisfied at the pinned versions, here by this venv's packages),
then run `kubetune-trainer` from that venv, outside the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# What trainer_image/Dockerfile copies into its build stage.
CONTEXT = ["pyproject.toml", "constraints.txt", "README.md", "operator", "trainer_image/kubetune_trainer"]
OWN = ("kubetune", "kubetune-", "kubetune_trainer", "__editable__", "_kubetune")


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert out.returncode == 0, (
        f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "src"
    for rel in CONTEXT:
        src, dst = REPO / rel, context / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    wheels = tmp / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(context),
        ]
    )

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    # The dependencies: this venv's installed packages (the tested, pinned set), kubetune itself left out.
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(
        run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    for entry in ours.iterdir():
        if entry.name.startswith(OWN) or entry.name.endswith(".pth") and "kubetune" in entry.read_text():
            continue
        if not (theirs / entry.name).exists():
            (theirs / entry.name).symlink_to(entry)
    # As in the Dockerfile, offline: it fails if a constraint or a requirement is not met by what is there.
    # From the temporary folder and without PYTHONPATH: a checkout on the target's path (its
    # kubetune.egg-info) looks like an installed kubetune to pip, which then installs nothing and exits 0.
    pip = run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index",
               "--find-links", str(wheels), "-c", str(context / "constraints.txt"), "kubetune[trainer]"],
              cwd=tmp, env=clean_env())  # fmt: skip
    # pip once exited 0 in a full `make test` without installing kubetune (no entry point afterwards): say
    # what it did, here, rather than fail the tests that use the venv without a reason.
    assert (venv / "bin" / "kubetune-trainer").exists(), (
        f"pip did not install kubetune:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    )
    return venv


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG")}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


def test_entrypoint_is_installed_from_the_wheel(image_venv, tmp_path):
    exe = image_venv / "bin" / "kubetune-trainer"
    assert exe.exists()
    out = run([str(image_venv / "bin" / "python"), "-c",
               "import kubetune_trainer.launch as l, kubetune_trainer.reporting as r, kubetune.api as a; "
               "print(l.__file__); print(r.__file__); print(a.__file__)"], cwd=tmp_path, env=clean_env())  # fmt: skip
    for line in out.stdout.split():
        assert str(image_venv) in line and str(REPO) not in line  # the installed copy, not the source tree
    help_text = run([str(exe), "--help"], cwd=tmp_path, env=clean_env()).stdout
    assert "launch" in help_text and "train" in help_text


def test_launch_plans_from_the_pod_env(image_venv, tmp_path):
    config = {
        "job": {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "llama", "namespace": "team"},
            "spec": {
                "model": {"uri": "hf://org/llama"},
                "dataset": {"uri": "hf://org/data"},
                "output": {"uri": "pvc://models/llama"},
                "method": {"type": "full"},
                "resources": {"nodes": 2, "gpusPerNode": 4},
                "distributed": {"strategy": "fsdp"},
            },
        },
        "runtime": {"runId": "abc", "outputDir": "/mnt/pvc/models/llama", "reportStatus": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    env = clean_env(KUBETUNE_CONFIG=str(path), KUBETUNE_NUM_NODES="2", KUBETUNE_GPUS_PER_NODE="4",
                    JOB_COMPLETION_INDEX="1", KUBETUNE_NODE_RANK="1", KUBETUNE_MASTER_ADDR="llama-trainer-0.llama",
                    KUBETUNE_LAUNCH_DIR=str(tmp_path / "launch"))  # fmt: skip
    out = run([str(image_venv / "bin" / "kubetune-trainer"), "launch", "--dry-run"], cwd=tmp_path, env=env)
    plan = json.loads(out.stdout)
    assert plan["strategy"] == "fsdp"
    assert plan["command"][-3:] == ["--no_python", str(image_venv / "bin" / "kubetune-trainer"), "train"]
    accel = json.loads(plan["files"][str(tmp_path / "launch" / "accelerate.json")])
    assert (accel["num_processes"], accel["machine_rank"], accel["main_process_ip"]) == (
        8,
        1,
        "llama-trainer-0.llama",
    )


def test_single_process_launch_becomes_kubetune_trainer_train(image_venv, tmp_path):
    """gpusPerNode 0: launch exec's `kubetune-trainer train` in its place (same PID, same env), whose exit
    code is the pod's. The model cannot be fetched offline, so train fails fast and says which one."""
    config = {
        "job": {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tiny", "namespace": "team"},
            "spec": {
                "model": {"uri": "hf://kubetune-test/not-in-any-cache"},
                "dataset": {"uri": "hf://kubetune-test/no-data"},
                "output": {"uri": "pvc://models/tiny"},
                "resources": {"gpusPerNode": 0},
            },
        },
        "runtime": {"runId": "r1", "outputDir": str(tmp_path / "out"), "metricsPort": None},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    env = clean_env(KUBETUNE_CONFIG=str(path), HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([str(image_venv / "bin" / "kubetune-trainer"), "launch"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"command: {image_venv / 'bin' / 'kubetune-trainer'} train" in out.stderr
    assert "hf://kubetune-test/not-in-any-cache" in out.stderr  # train read the config launch was given
