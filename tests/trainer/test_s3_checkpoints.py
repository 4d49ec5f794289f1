"""s3:// output against a real S3-compatible server on loopback (moto in server mode): checkpoints are uploaded
as they complete (marker last) and pruned to keepLast; after a SIGTERM, a restart with a fresh, empty staging
dir (a new pod's emptyDir) downloads the newest complete one and resumes there; the result lands in S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune_trainer import checkpoints, remote, sources
from kubetune_trainer.config import load_manifest, local_config
from kubetune_trainer.train import run_training
from tests.support.waiting import process_exited, wait_for

from .test_checkpoints import FirstStep

pytestmark = pytest.mark.trainer
REPO = Path(__file__).resolve().parents[2]
BUCKET = "bucket"
OUTPUT = f"s3://{BUCKET}/run"


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 (a free port) and the AWS_* env the operator gives the pod."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "kubetune-test",
        "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_REGION": "eu-central-1",  # us-east-1 rejects an explicit location constraint (s3fs mkdir)
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def fs(s3_env):  # noqa: ARG001
    fs = sources.s3_filesystem()
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


def remote_steps(fs, run_id: str) -> dict[int, bool]:
    """step -> complete (marker of this run) of every checkpoint folder in S3."""
    store = remote.RemoteCheckpoints(OUTPUT, fs)
    return {step: checkpoints.is_complete(store.read_marker(f), run_id) for step, f in store.listing()}


def test_remote_choice_follows_the_local_rules(fs, tmp_path):
    """Incomplete (no marker) and foreign checkpoints are never restored, however new; pruning drops them."""
    root = f"{BUCKET}/run/checkpoints"
    for step, run_id in ((10, "run-a"), (20, "run-a"), (30, None), (40, "run-b")):
        fs.pipe_file(
            f"{root}/checkpoint-{step}/trainer_state.json", json.dumps({"global_step": step}).encode()
        )
        if run_id:
            fs.pipe_file(
                f"{root}/checkpoint-{step}/{checkpoints.MARKER}", json.dumps({"runId": run_id}).encode()
            )
    store = remote.RemoteCheckpoints(OUTPUT, fs)
    assert store.latest_complete("run-a") == f"{root}/checkpoint-20"
    assert store.latest_complete("run-c") is None
    restored = remote.restore(store, str(tmp_path), "run-a")
    assert restored == tmp_path / "checkpoints" / "checkpoint-20"
    assert json.loads((restored / "trainer_state.json").read_text()) == {"global_step": 20}
    assert checkpoints.latest_complete(str(tmp_path), "run-a") == restored
    assert remote.restore(store, str(tmp_path / "other"), "run-c") is None
    store.prune("run-a", keep_last=1)
    assert remote_steps(fs, "run-a") == {20: True}


def test_sigterm_then_fresh_pod_resumes_from_s3(assets, datasets_dir, fs, s3_env, tmp_path):
    max_steps, every, keep = 30, 5, 2
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "preempt-s3"},
                "spec": {
                    "model": {"uri": f"file://{assets['llama']}"},
                    "dataset": {"uri": f"file://{datasets_dir / 'capitals.jsonl'}", "maxLength": 32},
                    "method": {"type": "lora", "lora": {"r": 4}},
                    "training": {"maxSteps": max_steps, "learningRate": 1e-3, "batchSize": 4},
                    "checkpoints": {"everySteps": every, "keepLast": keep},
                },
            }
        )
    )

    def s3_config(staging: Path):
        config = local_config(load_manifest(str(manifest)), str(staging))
        runtime = config.runtime.model_copy(update={"output_uri": OUTPUT})
        return config.model_copy(update={"runtime": runtime})

    run_id = s3_config(tmp_path / "x").runtime.run_id

    # pod 1: trains into its staging dir until a checkpoint is in S3, then gets SIGTERM
    first = tmp_path / "pod-1"
    env = {
        **os.environ,
        **s3_env,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
    }
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from kubetune_trainer.config import load_manifest, local_config\n"
        "from kubetune_trainer.errors import Preempted\n"
        "from kubetune_trainer.train import run_training\n"
        "c = local_config(load_manifest(sys.argv[1]), sys.argv[2])\n"
        "c = c.model_copy(update={'runtime': c.runtime.model_copy(update={'output_uri': sys.argv[3]})})\n"
        "try:\n"
        "    run_training(c)\n"
        "except Preempted as stop:\n"
        "    print('stopped:', stop, flush=True)\n"
        "    sys.exit(Preempted.exit_code)\n"
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(manifest), str(first), OUTPUT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def in_s3() -> bool:
            fs.invalidate_cache()
            return fs.exists(f"{BUCKET}/run/checkpoints/checkpoint-{every}/{checkpoints.MARKER}")

        wait_for(
            in_s3,
            180,
            0.1,
            f"checkpoint {every} in S3",
            fail_if=process_exited(proc, "the trainer", proc.stdout.read),
        )
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert "SIGTERM" in output

    store = remote.RemoteCheckpoints(OUTPUT, fs)
    saved = store.latest_complete(run_id)
    assert saved is not None
    step = checkpoints.step_of(saved.rsplit("/", 1)[-1])
    assert every < step < max_steps, output  # the SIGTERM checkpoint, after the one we waited for
    assert f"checkpoint at step {step}: {OUTPUT}/checkpoints/checkpoint-{step}" in output  # the remote URI
    state = json.loads(fs.cat_file(f"{saved}/trainer_state.json"))
    assert state["global_step"] == step
    names = {f.rsplit("/", 1)[-1] for f in fs.find(saved)}
    assert {"optimizer.pt", "scheduler.pt", "adapter_model.safetensors", checkpoints.MARKER} <= names
    assert any(n.startswith("rng_state") for n in names)
    after_sigterm = remote_steps(fs, run_id)
    assert all(after_sigterm.values()) and len(after_sigterm) == keep and max(after_sigterm) == step
    assert not fs.exists(f"{BUCKET}/run/_SUCCESS")
    print(
        f"\nSIGTERM checkpoint in S3 at step {step}; remote checkpoints {sorted(after_sigterm)} "
        f"after {time.monotonic() - started:.1f}s"
    )

    # pod 2: a fresh, empty staging dir; resumes from S3 at the saved step, not step 0
    fresh = tmp_path / "pod-2"
    assert not fresh.exists()
    probe = FirstStep()
    outcome = run_training(s3_config(fresh), extra_callbacks=[probe])
    print(
        f"restart with an empty staging dir: first step {probe.first_step}, "
        f"finished at {outcome.trainer.state.global_step}"
    )
    assert probe.first_step == step + 1
    assert outcome.trainer.state.global_step == max_steps

    fs.invalidate_cache()
    success = json.loads(fs.cat_file(f"{BUCKET}/run/_SUCCESS"))
    assert success["uri"] == OUTPUT and success["kind"] == "adapter"
    lineage = json.loads(fs.cat_file(f"{BUCKET}/run/lineage.json"))
    assert lineage["configHash"] == run_id and lineage["result"]["uri"] == OUTPUT
    assert fs.exists(f"{BUCKET}/run/adapter_model.safetensors") and fs.exists(f"{BUCKET}/run/README.md")
    final = remote_steps(fs, run_id)
    print(f"remote checkpoints at the end: {sorted(final)} (keepLast {keep})")
    assert final == {max_steps - every: True, max_steps: True}
