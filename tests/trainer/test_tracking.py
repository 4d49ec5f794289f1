"""spec.tracking on a real (tiny) local training run: TensorBoard event files under the output, a real MLflow
tracking server on loopback, and W&B's own offline run files receive the run's parameters and its loss series."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.render.finetunejob import RenderOptions, render_job
from kubetune_trainer import tracking
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.train import run_training
from tests.support.mlflow_server import MLflowServer
from tests.support.waiting import wait_for

from .toy import job_config, logged_losses

pytestmark = pytest.mark.trainer


@pytest.fixture
def clean_tracking_env(monkeypatch):
    """Every variable tracking.prepare may set is restored (unset) after the test."""
    for name in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TAGS",
                 "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_GROUP"):  # fmt: skip
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def test_local_run_writes_tensorboard_and_reaches_mlflow(
    assets, datasets_dir, tmp_path, mlflow_server, clean_tracking_env
):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = job_config(
        tmp_path, assets["llama"], datasets_dir / "capitals.jsonl", name="tracked",
        tracking={"tensorboard": {"enabled": True},
                  "mlflow": {"trackingUri": mlflow_server.uri, "experiment": "kubetune-tests"}},
    )  # fmt: skip
    outcome = run_training(config)
    losses = logged_losses(outcome.trainer)
    assert len(losses) >= 10  # maxSteps 12, logging every step

    # TensorBoard: the event files under OUTPUT/tensorboard hold the same loss series.
    tb_dir = tmp_path / "out" / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [
        entry["step"] for entry in outcome.trainer.state.log_history if "loss" in entry
    ]
    assert [e.value for e in scalars] == pytest.approx(losses, rel=1e-5)

    # MLflow: one run in the experiment, named and tagged after the FineTuneJob, with its hyperparameters
    # and the loss series step by step.
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("kubetune-tests")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"tracked-{config.runtime.run_id}"
    assert run.data.tags["kubetune.finetunejob"] == "tracked"
    assert run.data.tags["kubetune.run_id"] == config.runtime.run_id
    assert float(run.data.params["learning_rate"]) == pytest.approx(5e-3)
    assert run.data.params["max_steps"] == "12"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(h.step for h in history) == [e.step for e in scalars]
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(losses, rel=1e-5)


def wandb_inspect(run_dir, *args: str) -> list[dict]:
    """A W&B run's transaction log (run-*.wandb), read by W&B's own reader: `wandb leet inspect --json`."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", *args, str(run_dir)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()] if not args else [json.loads(proc.stdout)]


def test_local_run_writes_a_wandb_offline_run(
    assets, datasets_dir, tmp_path, clean_tracking_env, monkeypatch
):
    """W&B in offline mode (the real wandb package): the run's transaction log under OUTPUT/wandb holds the
    FineTuneJob's run, its hyperparameters and the loss series, ready for `wandb sync`."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config/wandb
    config = job_config(
        tmp_path, assets["llama"], datasets_dir / "capitals.jsonl", name="wandb-tracked",
        tracking={"wandb": {"project": "kubetune-tests", "mode": "offline"}},
    )  # fmt: skip
    outcome = run_training(config)
    wandb.finish()  # what the trainer process's exit does in a pod (wandb's atexit hook)
    losses = logged_losses(outcome.trainer)
    assert len(losses) >= 10

    (run_dir,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    # wandb-core writes the end of the log a moment after finish() returns.
    (summary,) = wait_for(
        lambda: (s := wandb_inspect(run_dir, "--summary"))[0]["state"] == "finished" and s,
        60, 0.5, "the W&B run's log to say finished",
    )  # fmt: skip
    assert summary["exit_code"] == 0 and summary["project"] == "kubetune-tests"
    assert summary["config"]["learning_rate"] == pytest.approx(5e-3) and summary["config"]["max_steps"] == 12
    assert summary["summary"]["train/loss"] == pytest.approx(losses[-1], rel=1e-5)
    records = wandb_inspect(run_dir)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (
        run["run_group"] == "wandb-tracked"
        and run["display_name"] == f"wandb-tracked-{config.runtime.run_id}"
    )
    logged = [
        (r["history"]["item"]["train/global_step"], r["history"]["item"]["train/loss"])
        for r in records
        if r["type"] == "history" and "train/loss" in r["history"]["item"]
    ]
    steps = [e["step"] for e in outcome.trainer.state.log_history if "loss" in e]
    assert [step for step, _ in logged] == steps
    assert [loss for _, loss in logged] == pytest.approx(losses, rel=1e-5)


def test_tracking_env_and_missing_package(tmp_path, clean_tracking_env, monkeypatch):
    config = job_config(
        tmp_path, "/models/m", "/data/d.jsonl", name="envs",
        tracking={"mlflow": {"trackingUri": "https://mlflow.example"},
                  "wandb": {"project": "p", "entity": "team", "mode": "offline"}},
    )  # fmt: skip
    env = tracking.tracking_env(config)
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example"
    assert env["MLFLOW_EXPERIMENT_NAME"] == "envs"  # local run: no namespace
    assert json.loads(env["MLFLOW_TAGS"])["kubetune.finetunejob"] == "envs"
    assert env["WANDB_MODE"] == "offline" and env["WANDB_ENTITY"] == "team"
    assert env["WANDB_DIR"] == str(tmp_path / "out")
    # A variable the user set through spec.env (here: the process env) wins.
    environ = {"MLFLOW_EXPERIMENT_NAME": "mine"}
    monkeypatch.setattr(tracking, "missing_packages", lambda trackers: [])
    kwargs = tracking.prepare(config, environ)
    assert kwargs["report_to"] == ["mlflow", "wandb"]
    assert environ["MLFLOW_EXPERIMENT_NAME"] == "mine"
    monkeypatch.setattr(tracking, "missing_packages", lambda trackers: ["wandb"])
    with pytest.raises(ConfigError, match="spec.tracking .* lacks the Python package.* wandb"):
        tracking.prepare(config, {})


def cluster_job(tracking_spec: dict) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tracked", "namespace": "ml", "uid": "u1"},
            "spec": {
                "model": {"uri": "hf://org/m"},
                "dataset": {"uri": "hf://org/d"},
                "output": {"uri": "pvc://models/tracked"},
                "tracking": tracking_spec,
            },
        }
    )


def test_credentials_come_from_secrets_as_env():
    job = cluster_job(
        {"mlflow": {"trackingUri": "http://mlflow.mlflow.svc:5000", "secretRef": {"name": "mlflow-creds"}},
         "wandb": {"project": "p", "secretRef": {"name": "wandb", "key": "api-key"}}}
    )  # fmt: skip
    (container,) = render_job(job, RenderOptions())["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-creds", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}  # fmt: skip
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    plain = render_job(cluster_job({"tensorboard": {"enabled": True}}), RenderOptions())
    names = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not any(n.startswith(("MLFLOW_", "WANDB_")) for n in names)


def test_wandb_online_needs_a_key():
    with pytest.raises(ValueError, match=r"tracking\.wandb\.secretRef.*WANDB_API_KEY.*mode offline"):
        cluster_job({"wandb": {"project": "p"}})
    cluster_job({"wandb": {"project": "p", "mode": "offline"}})
    with pytest.raises(ValueError, match="trackingUri"):
        cluster_job({"mlflow": {"trackingUri": "mlflow.local:5000"}})


def test_no_tracking_reports_nowhere(tmp_path):
    config = job_config(tmp_path, "/m", "/d.jsonl")
    environ: dict[str, str] = {}
    assert tracking.prepare(config, environ) == {"report_to": []}
    assert environ == {}
