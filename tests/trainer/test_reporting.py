"""Reporting: console lines and Prometheus gauges from a real (tiny) training, the status patches'
rate limiting, and training that goes on when the API server cannot be reached.
The test against a real API server with a ServiceAccount token is in test_reporting_cluster.py."""

from __future__ import annotations

import urllib.request

import pytest

from kubetune.api.v1alpha1 import TrainerConfig
from kubetune_trainer import reporting
from kubetune_trainer.reporting import ReportingCallback, StatusWriter, make_callbacks, progress_line

pytestmark = pytest.mark.trainer


def trainer_config(tmp_path, name="tiny", namespace="ns", report_status=False, metrics_port=None, uid=None):
    return TrainerConfig.model_validate(
        {
            "job": {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "model": {"uri": "hf://org/tiny"},
                    "dataset": {"uri": "hf://org/data"},
                    "output": {"uri": "pvc://models/tiny"},
                },
            },
            "runtime": {
                "runId": "r1",
                "outputDir": str(tmp_path / "out"),
                "reportStatus": report_status,
                "metricsPort": metrics_port,
                "uid": uid,
            },
        }
    )


def tiny_training(tmp_path, callbacks, steps=6, logging_steps=2):
    """A real Trainer run on a random 2-layer Llama over variable-length sequences (with padding)."""
    import torch
    from transformers import (
        DataCollatorWithPadding,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0)
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(48):
        n = 4 + (i * 7) % 20
        ids = torch.randint(1, 64, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * n})

    class Collate:
        def __init__(self):
            class Tok:
                pad_token_id = 0
                padding_side = "right"
                model_input_names = ["input_ids", "attention_mask"]

                def pad(self, features, **kw):
                    longest = max(len(f["input_ids"]) for f in features)
                    out = {k: [] for k in ("input_ids", "attention_mask")}
                    for f in features:
                        pad = longest - len(f["input_ids"])
                        out["input_ids"].append(f["input_ids"] + [0] * pad)
                        out["attention_mask"].append(f["attention_mask"] + [0] * pad)
                    return {k: torch.tensor(v) for k, v in out.items()}

            self.inner = DataCollatorWithPadding(Tok())

        def __call__(self, features):
            batch = self.inner.tokenizer.pad(features)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
            return batch

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
        logging_steps=logging_steps, learning_rate=1e-3, report_to=[], save_strategy="no",
        use_cpu=True, disable_tqdm=True, eval_strategy="steps", eval_steps=steps, per_device_eval_batch_size=8,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8],
                      data_collator=Collate(), callbacks=callbacks)  # fmt: skip
    trainer.train()
    return trainer


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("kubetune_trainer_"):
            key, value = line.rsplit(" ", 1)
            values[key.split("{")[0]] = float(value)
    return values


def test_local_run_prints_progress_and_serves_metrics(tmp_path, capsys):
    config = trainer_config(tmp_path, metrics_port=0)  # 0: any free port
    callbacks = make_callbacks(config)
    callback = callbacks[0]
    assert isinstance(callback, ReportingCallback) and callback.metrics is not None
    try:
        trainer = tiny_training(tmp_path, callbacks)
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith("step ")]
        # one line per logging step (2, 4, 6) plus the evaluation at 6
        assert any(line.startswith("step 2/6 (33.3%)") for line in lines), out
        assert any(line.startswith("step 6/6 (100.0%)") and "eval_loss" in line for line in lines), out
        assert all("loss" in line and "tok/s" in line for line in lines if "eval_loss" not in line)
        # the Trainer counted non-padding tokens because the callback asked it to
        assert trainer.args.include_num_input_tokens_seen == "non_padding"
        real_tokens = sum(4 + (i * 7) % 20 for i in range(48))
        assert 0 < trainer.state.num_input_tokens_seen <= real_tokens
        metrics = scrape(callback.metrics.port)
        assert metrics["kubetune_trainer_step"] == 6
        assert metrics["kubetune_trainer_total_steps"] == 6
        assert metrics["kubetune_trainer_tokens_seen"] == trainer.state.num_input_tokens_seen
        assert metrics["kubetune_trainer_tokens_per_second"] > 0
        assert metrics["kubetune_trainer_loss"] > 0 and metrics["kubetune_trainer_eval_loss"] > 0
        assert metrics["kubetune_trainer_learning_rate"] >= 0
        assert metrics["kubetune_trainer_epoch"] > 0
        final = callback.last_progress
        assert final["step"] == 6 and final["percent"] == 100.0 and final["etaSeconds"] == 0
    finally:
        callback.metrics.close()


class RecordingWriter(StatusWriter):
    """The status a real API server would end up with (merge semantics), without a server."""

    def __init__(self, config):
        super().__init__(config, api_client=object())
        self.bodies = []

    def patch(self, status):
        self.bodies.append(status)
        return True


class FakeState:
    is_world_process_zero = True

    def __init__(self, step, max_steps=100):
        self.global_step, self.max_steps, self.epoch, self.num_input_tokens_seen = (
            step,
            max_steps,
            step / 50,
            step * 1000,
        )


def test_progress_is_rate_limited_but_the_end_is_always_reported(tmp_path):
    config = trainer_config(tmp_path, report_status=True)
    now = [1000.0]
    writer = RecordingWriter(config)
    cb = ReportingCallback(config, writer=writer, interval=5.0, clock=lambda: now[0])
    cb.on_train_begin(None, FakeState(0), None)
    assert [b["progress"]["step"] for b in writer.bodies] == [0]
    for step in range(1, 21):  # a log every 0.5 s for 10 s
        now[0] += 0.5
        cb.on_log(None, FakeState(step), None, logs={"loss": 3.0 - step / 10, "learning_rate": 1e-4})
    reported = [b["progress"]["step"] for b in writer.bodies]
    assert reported == [0, 10, 20]  # at most one patch per 5 s
    cb.on_train_end(None, FakeState(21), None)
    last = writer.bodies[-1]["progress"]
    assert last["step"] == 21 and last["percent"] == 21.0
    assert last["loss"] == pytest.approx(1.0) and last["learningRate"] == 1e-4
    assert last["tokensPerSecond"] == pytest.approx(2000.0)  # 1000 tokens per step, 2 steps/s
    assert last["etaSeconds"] == pytest.approx(10.0 / 21 * 79, rel=0.01)  # 10 s for 21 steps, 79 to go
    assert set(last) == {"step", "totalSteps", "epoch", "percent", "loss", "evalLoss", "learningRate",
                         "tokensPerSecond", "etaSeconds", "updatedAt"}  # fmt: skip
    assert last["updatedAt"].endswith("Z")


def test_only_rank_zero_reports(tmp_path, monkeypatch):
    config = trainer_config(tmp_path, report_status=True)
    writer = RecordingWriter(config)
    cb = ReportingCallback(config, writer=writer, interval=0)
    state = FakeState(3)
    state.is_world_process_zero = False
    cb.on_train_begin(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 1.0})
    cb.on_train_end(None, state, None)
    assert writer.bodies == []
    monkeypatch.setenv("RANK", "3")
    assert make_callbacks(trainer_config(tmp_path, metrics_port=0))[0].metrics is None  # no server on rank 3
    reporting.report_checkpoint(config, "pvc://x/ckpt", 3)  # would fail (no cluster) if it tried


def test_progress_line():
    line = progress_line({"step": 50, "totalSteps": 200, "epoch": 0.5, "percent": 25.0, "loss": 1.23456,
                          "evalLoss": None, "learningRate": 2e-5, "tokensPerSecond": 12345.6, "etaSeconds": 3725})  # fmt: skip
    assert line == "step 50/200 (25.0%) | epoch 0.50 | loss 1.2346 | lr 2.00e-05 | 12,346 tok/s | eta 1h02m"


def test_unreachable_api_server_never_stops_training(tmp_path, monkeypatch, caplog):
    """A cluster-mode run whose API server is down: patches fail, are logged, and training finishes."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: nothing}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    config = trainer_config(tmp_path, report_status=True)
    callbacks = make_callbacks(config)
    with caplog.at_level("WARNING", logger="kubetune_trainer.reporting"):
        trainer = tiny_training(tmp_path, callbacks, steps=4)
        reporting.report_checkpoint(config, "pvc://models/tiny/checkpoint-4", 4)
        reporting.report_result(
            config, {"uri": "pvc://models/tiny", "kind": "full", "metrics": {"train_loss": 1.0}}
        )
    assert trainer.state.global_step == 4
    assert callbacks[0].writer.failures >= 2 and callbacks[0].writer.patches == 0
    assert "could not patch the status of FineTuneJob ns/tiny" in caplog.text


def test_no_credentials_turns_reporting_off(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    writer = StatusWriter(trainer_config(tmp_path, report_status=True))
    with caplog.at_level("WARNING", logger="kubetune_trainer.reporting"):
        assert writer.patch({"progress": {"step": 1}}) is False
        assert writer.patch({"progress": {"step": 2}}) is False
    assert caplog.text.count("status reporting is off") == 1


def test_namespace_from_pod_env_when_the_config_has_none(tmp_path, monkeypatch):
    config = trainer_config(tmp_path, namespace=None)
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    assert reporting.job_namespace(config) == "team-a"
    monkeypatch.delenv("POD_NAMESPACE")
    sa = tmp_path / "sa-namespace"
    sa.write_text("team-b\n")
    monkeypatch.setattr(reporting, "SA_NAMESPACE_FILE", str(sa))
    assert reporting.job_namespace(config) == "team-b"
    assert reporting.job_namespace(trainer_config(tmp_path, namespace="ns")) == "ns"


def test_local_result_and_checkpoint_go_to_the_console(tmp_path, capsys):
    config = trainer_config(tmp_path)
    reporting.report_checkpoint(config, str(tmp_path / "checkpoint-10"), 10)
    reporting.report_result(config, {"uri": str(tmp_path / "out"), "kind": "adapter",
                                     "metrics": {"eval_loss": 0.5, "train_loss": float("nan")}})  # fmt: skip
    out = capsys.readouterr().out
    assert f"checkpoint at step 10: {tmp_path / 'checkpoint-10'}" in out
    assert f"result: adapter at {tmp_path / 'out'}" in out
    assert "eval_loss: 0.5" in out and "train_loss" not in out  # NaN is not a figure


@pytest.mark.parametrize("setting", ["no", "all", "non_padding"])
def test_tokens_are_counted_without_padding(tmp_path, setting):
    from types import SimpleNamespace

    args = SimpleNamespace(include_num_input_tokens_seen=setting)
    ReportingCallback(trainer_config(tmp_path)).on_init_end(args, FakeState(0), None)
    assert args.include_num_input_tokens_seen == "non_padding"
