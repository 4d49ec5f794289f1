"""`kubetune status` and `kubetune logs` (also as the kubectl plugin) against the real API server, on
FineTuneJobs and ModelServes whose status is written as the operator writes it (tests/gitops/states.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kubernetes import client

from kubetune.cli_status import COMPLETION_INDEX, JOB_NAME_LABEL, progress_bar, select_pods
from tests.support.controlplane import ensure_testbin
from tests.support.waiting import process_exited, wait_for

from . import states

REPO = Path(__file__).resolve().parents[2]


def kubetune(kube, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], env=kube.env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_status_of_a_running_finetunejob(kube, world):
    ns = world["ftj-running"]["metadata"]["namespace"]
    proc = kubetune(kube, "status", "ftj-running", "-n", ns)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"FineTuneJob {ns}/ftj-running: Running" in out
    assert progress_bar(40, 100) in out and "40/100 steps  40.0%" in out
    assert "[############..................]" in out
    for figure in ("epoch 1.20", "loss 1.2500", "5,120 tokens/s", "ETA 5m00s", "trainer Job x-trainer"):
        assert figure in out
    assert "Reconciling  True    Running" in out and "Training: step 40/100" in out


def test_status_of_finished_stale_and_serving_objects(kube, world):
    ns = world["ftj-running"]["metadata"]["namespace"]
    done = kubetune(kube, "status", "ftj-succeeded", "-n", ns).stdout
    assert "Succeeded" in done and "result: adapter at pvc://models/x" in done and "ETA" not in done
    stale = kubetune(kube, "status", "ftj-stale", "-n", ns).stdout
    assert "the operator has not seen generation 2 yet; status is of 1" in stale
    serving = kubetune(kube, "status", "ms-ready", "-n", ns).stdout
    assert f"ModelServe {ns}/ms-ready: Ready" in serving
    assert "1/1 replicas ready, endpoint http://x.ns.svc:80" in serving and "revision abc123" in serving


def test_status_of_a_missing_name_says_what_to_do(kube, world):
    ns = world["ftj-running"]["metadata"]["namespace"]
    proc = kubetune(kube, "status", "nope", "-n", ns)
    assert proc.returncode == 1
    assert f"no FineTuneJob or ModelServe named nope in namespace {ns}" in proc.stderr


@pytest.mark.parametrize(("final", "code"), [(states.ftj_succeeded, 0), (states.ftj_failed, 1)])
def test_status_watch_follows_until_the_run_ends(kube, namespace, final, code):
    states.create(kube.api, namespace, "FineTuneJob", "followed", states.ftj_running(1))
    proc = subprocess.Popen([sys.executable, "-m", "kubetune.cli", "status", "followed", "-n", namespace, "-w",
                             "--timeout", "90"], env=kube.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def shown(text: str, timeout: float = 60) -> None:
        wait_for(
            lambda: any(text in line for line in list(lines)), timeout, 0.1, f"{text!r} in the output {lines}",
            fail_if=process_exited(proc, "kubetune status -w", proc.stderr.read),
        )  # fmt: skip

    try:
        shown("40/100 steps")  # the first view
        later = states.ftj_running(1)
        later["progress"] = {**later["progress"], "step": 80, "percent": 80.0, "loss": 0.75}
        states.write_status(kube.api, namespace, "FineTuneJob", "followed", later)
        shown("80/100 steps")  # followed through the watch
        assert proc.poll() is None
        states.write_status(kube.api, namespace, "FineTuneJob", "followed", final(1))
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        proc.kill()
    out = "".join(lines)
    assert proc.returncode == code, proc.stderr.read()
    assert "loss 0.7500" in out
    assert ("Succeeded" if code == 0 else "backoffLimit 3") in out.split("FineTuneJob ")[-1]


def pod(name: str, job_name: str, rank: int, attempt: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {JOB_NAME_LABEL: job_name, "kubetune.io/finetunejob": "logged",
                                              "kubetune.io/attempt": str(attempt)},
                     "annotations": {COMPLETION_INDEX: str(rank)}},
        "spec": {"containers": [{"name": "trainer", "image": "registry.invalid/trainer:1"}],
                 "nodeSelector": {"kubetune.io/no-such-node": "x"}},  # stays Pending: nothing runs
    }  # fmt: skip


def test_logs_reads_the_pods_of_the_current_attempt(kube, namespace):
    status = states.ftj_running(1)
    status.update(jobName="logged-a2", attempts=2)
    states.create(kube.api, namespace, "FineTuneJob", "logged", status)
    core = client.CoreV1Api(kube.api)
    for name, job, rank, attempt in [("logged-a1-0", "logged-a1", 0, 1), ("logged-a1-1", "logged-a1", 1, 1),
                                     ("logged-a2-0", "logged-a2", 0, 2), ("logged-a2-1", "logged-a2", 1, 2)]:  # fmt: skip
        core.create_namespaced_pod(namespace, pod(name, job, rank, attempt))
    pods = [kube.api.sanitize_for_serialization(p) for p in core.list_namespaced_pod(namespace).items]
    assert [p["metadata"]["name"] for p in select_pods(pods, "logged-a2")] == ["logged-a2-0", "logged-a2-1"]
    assert [p["metadata"]["name"] for p in select_pods(pods, "logged-a2", rank=1)] == ["logged-a2-1"]

    # The local control plane's kwok nodes run no containers (and these pods never start), so there are no
    # log lines: the command reads the API server's log endpoint of exactly the right pods, in rank order.
    proc = kubetune(kube, "logs", "logged", "-n", namespace, "--rank", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["==> pod logged-a2-1: 0 lines <=="]
    both = kubetune(kube, "logs", "logged", "-n", namespace).stdout.splitlines()
    assert both == ["==> pod logged-a2-0 [rank 0]: 0 lines <==", "==> pod logged-a2-1 [rank 1]: 0 lines <=="]
    none = kubetune(kube, "logs", "logged", "-n", namespace, "--rank", "5")
    assert none.returncode == 1 and "has no pods of rank 5" in none.stderr


def test_logs_before_the_trainer_job_exists(kube, namespace):
    states.create(kube.api, namespace, "FineTuneJob", "early", states.ftj_pending(1))
    proc = kubetune(kube, "logs", "early", "-n", namespace)
    assert proc.returncode == 1 and "has no trainer Job yet (phase Pending)" in proc.stderr


def test_kubectl_plugin(kube, world, tmp_path):
    """kubectl finds kubectl-kubetune on PATH (the console script pyproject.toml installs) and runs it."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-kubetune"] == "kubetune.cli:main"
    plugin = tmp_path / "kubectl-kubetune"
    plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -c "from kubetune.cli import main; main()" "$@"\n')
    plugin.chmod(0o755)
    kubectl = str(ensure_testbin().binary("kubectl"))
    env = kube.env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    ns = world["ftj-running"]["metadata"]["namespace"]
    listed = subprocess.run([kubectl, "plugin", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert str(plugin) in listed.stdout
    proc = subprocess.run([kubectl, "kubetune", "status", "ftj-running", "-n", ns], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"FineTuneJob {ns}/ftj-running: Running" in proc.stdout
