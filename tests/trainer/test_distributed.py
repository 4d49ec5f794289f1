"""Multi-process training for real, on CPU (DDP with gloo), through the launch code the pods run:

- ``kubetune train --local --processes 2``: a rank killed with SIGKILL ends the launch (non-zero, bounded
  time); the next launch resumes from the last complete checkpoint and finishes with world size 2 and
  equal replicas;
- two ``kubetune-trainer launch`` processes as the two nodes of an Indexed Job (rank from
  JOB_COMPLETION_INDEX, rendezvous at 127.0.0.1): SIGTERM to one launcher stops every rank at the same step
  with a complete checkpoint; the relaunch resumes at the saved step + 1; the result is written and
  reported once, by rank 0;
- a rank that hangs (test-only hook) ends the attempt as Stalled within training.stallTimeoutSeconds:
  exit code 75, the termination message written, status.progress.reason Stalled in the real API server;
- FSDP needs GPUs (accelerate has no FSDP for CPU processes): with two GPUs it runs, else a skip says why.

Each launch starts 2-3 Python processes that import torch and transformers: ~30-40 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune_trainer import checkpoints, stall, termination
from kubetune_trainer.config import load_manifest, local_config
from tests.support.crds import apply_crds
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # one launch, from start to exit, on a busy 2-core machine


def manifest(
    tmp_path: Path, assets, datasets_dir, name: str, namespace: str | None = None, **training
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
                "spec": {
                    "model": {"uri": f"file://{assets['llama']}"},
                    "dataset": {"uri": f"file://{datasets_dir / 'capitals.jsonl'}", "maxLength": 32},
                    "method": {"type": "lora", "lora": {"r": 4}},
                    "training": {"maxSteps": 50, "learningRate": 1e-3, "batchSize": 4, **training},
                    "resources": {"gpusPerNode": 0},
                    "checkpoints": {"everySteps": 10, "keepLast": 3},
                },
            }
        )
    )
    return path


def base_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image"), str(REPO)]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "KUBETUNE_WORLD_SIZE"):
        env.pop(name, None)
    return env


def kubetune_train(path: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kubetune.cli", "train", "-f", str(path), "--local", "--processes", "2",
           "--output", str(out)]  # fmt: skip
    return subprocess.Popen(
        cmd, env=env or base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )


def finish(proc: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output


def until(predicate, procs: list[subprocess.Popen], what: str, timeout: float = LAUNCH_TIMEOUT) -> None:
    """wait_for PREDICATE, giving up at once when one of PROCS exits first (with its output)."""

    def exited() -> str | None:
        gone = next((proc for proc in procs if proc.poll() is not None), None)
        return None if gone is None else f"exited with {gone.returncode}:\n{gone.stdout.read()}"

    wait_for(predicate, timeout, 0.05, what, fail_if=exited)


def complete_checkpoint(out: Path, step: int) -> bool:
    return (out / "checkpoints" / f"checkpoint-{step}" / checkpoints.MARKER).exists()


def training_ranks(root_pid: int) -> dict[int, int]:
    """{RANK: pid} of the training processes below ROOT_PID (from /proc: parent links and environments)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])

    def below(pid: int) -> bool:
        while pid in parents and pid > 1:
            pid = parents[pid]
            if pid == root_pid:
                return True
        return False

    ranks = {}
    for pid in parents:
        if not below(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        if "RANK" in env and "LOCAL_RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def first_step(output: str) -> int:
    """The first step rank 0 printed (one console line per step: logging_steps is 1 up to 50 steps)."""
    match = re.search(r"^step (\d+)/\d+", output, re.MULTILINE)
    assert match, output[-3000:]
    return int(match.group(1))


def saved_step(path: Path, out: Path) -> int:
    config = local_config(load_manifest(str(path)), str(out))
    saved = checkpoints.latest_complete(str(out), config.runtime.run_id)
    assert saved is not None, "no complete checkpoint"
    step = checkpoints.step_of(saved.name)
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["global_step"] == step
    # complete: model, optimizer, scheduler, and the RNG state of every rank
    assert (saved / "adapter_model.safetensors").exists() and (saved / "optimizer.pt").exists()
    assert sorted(p.name for p in saved.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    return step


def assert_world_of_two(out: Path, output: str, steps: int) -> None:
    lineage = json.loads((out / "lineage.json").read_text())
    ran = lineage["distributed"]
    assert (ran["worldSize"], ran["strategy"], ran["backend"]) == (2, "ddp", "gloo"), ran
    digests = ran["replicaDigests"]
    assert len(digests) == 2 and digests[0] == digests[1] and ran["replicasInSync"] is True, ran
    assert (out / "_SUCCESS").exists()
    assert (
        json.loads((out / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").read_text())[
            "global_step"
        ]
        == steps
    )
    # written and reported once, by rank 0
    assert output.count("result: adapter at ") == 1, output[-3000:]
    assert "world size 2 (rank 0)" in output and "world size 2 (rank 1)" in output


# ---------------------------------------------------------------------------------------------- local


def test_local_processes_sigkill_of_a_rank_ends_the_launch_and_the_next_resumes(
    assets, datasets_dir, tmp_path
):
    path = manifest(tmp_path, assets, datasets_dir, "ddp")
    out = tmp_path / "out"
    proc = kubetune_train(path, out)
    try:
        until(lambda: complete_checkpoint(out, 10), [proc], "checkpoint 10")
        ranks = training_ranks(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        code, output = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0, output[-3000:]
    assert time.monotonic() - killed_at < 120
    assert "launching world size 2: ddp on CPU (gloo), 1 node(s) x 2 process(es)" in output
    assert not (out / "_SUCCESS").exists()
    for pid in ranks.values():  # no rank outlives the launch
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    step = saved_step(path, out)

    code, output = finish(kubetune_train(path, out))
    assert code == 0, output[-5000:]
    assert first_step(output) == step + 1  # resumed from the last complete checkpoint, not restarted
    assert "finished in" in output and "with world size 2 (ddp, backend gloo)" in output
    assert_world_of_two(out, output, 50)


# ---------------------------------------------------------------------------------------------- two nodes


def node(config_file: Path, index: int, port: int, launch_dir: Path) -> subprocess.Popen:
    """One pod of a 2-node Indexed Job: its env as the operator renders it (render/finetunejob.py), with
    the node rank coming from the Job controller's JOB_COMPLETION_INDEX and pod 0 at 127.0.0.1."""
    env = base_env(
        KUBETUNE_CONFIG=str(config_file),
        KUBETUNE_NUM_NODES="2",
        KUBETUNE_GPUS_PER_NODE="0",
        KUBETUNE_MASTER_ADDR="127.0.0.1",
        KUBETUNE_MASTER_PORT=str(port),
        JOB_COMPLETION_INDEX=str(index),
        KUBETUNE_LAUNCH_DIR=str(launch_dir / f"node-{index}"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.cli", "launch", "--local"],  # --local: file:// URIs
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def test_two_nodes_sigterm_stops_every_rank_and_the_relaunch_resumes(assets, datasets_dir, tmp_path):
    path = manifest(tmp_path, assets, datasets_dir, "nodes")
    out = tmp_path / "out"
    config = local_config(load_manifest(str(path)), str(out))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.model_dump(by_alias=True, mode="json")))

    port = free_port()
    nodes = [node(config_file, i, port, tmp_path) for i in (0, 1)]
    try:
        until(lambda: complete_checkpoint(out, 10), nodes, "checkpoint 10")
        # The kubelet's SIGTERM reaches node 1 only: rank 0 must stop at the same step and save.
        nodes[1].send_signal(signal.SIGTERM)
        results = [finish(n, timeout=180) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    outputs = [o for _, o in results]
    assert all(code != 0 for code, _ in results), [c for c, _ in results]
    stopped = [re.search(r"stopped after SIGTERM at step (\d+)", o) for o in outputs]
    assert all(stopped), outputs[0][-3000:] + outputs[1][-3000:]
    assert stopped[0].group(1) == stopped[1].group(1)  # every rank at the same step
    assert "another rank got SIGTERM" in outputs[0]
    step = saved_step(path, out)
    assert step == int(stopped[0].group(1))  # the checkpoint of the SIGTERM step is complete
    assert not (out / "_SUCCESS").exists()

    port = free_port()
    nodes = [node(config_file, i, port, tmp_path) for i in (0, 1)]
    results = [finish(n) for n in nodes]
    assert [c for c, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    rank0, rank1 = (o for _, o in results)
    assert "node 0 of 2, world size 2: ddp on CPU (gloo), 2 node(s) x 1 process(es)" in rank0
    assert "node 1 of 2, world size 2" in rank1
    assert first_step(rank0) == step + 1
    assert_world_of_two(out, rank0 + rank1, 50)
    # progress, checkpoints and the result come from rank 0 (node 0) only
    assert "checkpoint at step" in rank0 and "checkpoint at step" not in rank1
    assert not re.search(r"^step \d+/", rank1, re.MULTILINE)


# ---------------------------------------------------------------------------------------------- stalls


@pytest.mark.cluster
def test_a_hung_rank_ends_the_attempt_as_stalled(assets, datasets_dir, tmp_path, kube, namespace):
    """Rank 1 hangs in step 13: within stallTimeoutSeconds every rank ends, the termination message and
    the FineTuneJob's status (real API server, the trainer's own ServiceAccount identity) say Stalled."""
    from kubernetes import client

    from tests.trainer.test_reporting_cluster import (
        GROUP,
        PLURAL,
        VERSION,
        finetunejob,
        trainer_identity,
    )

    apply_crds(kube.api)
    custom = client.CustomObjectsApi(kube.api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, finetunejob("stall"))
    _token, identity = trainer_identity(kube.api, namespace, "stall", tmp_path, kube.kubeconfig)

    path = manifest(tmp_path, assets, datasets_dir, "stall", namespace, stallTimeoutSeconds=10)
    out = tmp_path / "out"
    termination_log = tmp_path / "termination-log"
    env = base_env(
        **{
            stall.ENV_TEST_HANG_RANK: "1",
            stall.ENV_TEST_HANG_AT_STEP: "13",
            termination.ENV_TERMINATION_LOG: str(termination_log),
            "KUBECONFIG": str(identity),
            "KUBETUNE_REPORT_STATUS": "true",  # report as a pod does
        }
    )
    proc = kubetune_train(path, out, env)
    try:
        until(lambda: complete_checkpoint(out, 10), [proc], "checkpoint 10")
        hung_since = time.monotonic()
        code, output = finish(proc, timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == termination.STALLED_EXIT_CODE, output[-3000:]  # the launch's code says Stalled, not just 1
    assert time.monotonic() - hung_since < 150  # 10 s without a step, then the launch ends
    message = termination_log.read_text()
    assert message.startswith("Stalled: no training step finished for 10s (training.stallTimeoutSeconds)")
    assert "after step 12 of 50" in message
    assert f"exitcode  : {termination.STALLED_EXIT_CODE}" in output  # torchrun's summary of the failed ranks
    assert saved_step(path, out) == 10  # the next attempt resumes from here

    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stall")["status"]
    assert status["progress"].get("reason") == "Stalled", status["progress"]  # rank 0's final report
    assert status["progress"]["message"] == message
    assert status["checkpoint"]["step"] == 10  # rank 0 reported the complete checkpoint


# ---------------------------------------------------------------------------------------------- FSDP


def test_fsdp_needs_gpus(assets, datasets_dir, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(
            "FSDP needs 2 GPUs here: accelerate enables FSDP only for GPU/accelerator worlds (a world of CPU "
            "processes is MULTI_CPU, never FSDP), so kubetune refuses strategy fsdp on CPU (test_launch.py)"
        )
    path = manifest(tmp_path, assets, datasets_dir, "fsdp", maxSteps=10)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["resources"]["gpusPerNode"] = 2
    doc["spec"]["method"] = {"type": "full"}
    doc["spec"]["distributed"] = {"strategy": "fsdp"}
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    code, output = finish(kubetune_train(path, out))
    assert code == 0, output[-5000:]
    ran = json.loads((out / "lineage.json").read_text())["distributed"]
    assert (ran["worldSize"], ran["strategy"]) == (2, "fsdp")
