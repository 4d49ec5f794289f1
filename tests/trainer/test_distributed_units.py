"""The pure and single-process parts of distributed training: the world-size check, the replicas' digest,
the stall watchdog (with a real thread and a fake clock) and what a stall writes before the process ends."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from kubetune_trainer import stall, termination, world
from kubetune_trainer.errors import TrainerError

from .toy import job_config

pytestmark = pytest.mark.trainer


# ---------------------------------------------------------------------------------------------- world


def test_world_size_check_refuses_a_world_other_than_the_launched_one():
    world.check_world_size(2, {"KUBETUNE_WORLD_SIZE": "2"})
    world.check_world_size(1, {})  # not launched: nothing to compare against
    world.check_world_size(4, {"WORLD_SIZE": "4"})  # torchrun's, when the launcher's is missing
    with pytest.raises(
        TrainerError, match="launched for a world of 2 processes but training runs in a world of 1"
    ):
        world.check_world_size(1, {"KUBETUNE_WORLD_SIZE": "2", "WORLD_SIZE": "1"})
    with pytest.raises(TrainerError, match="KUBETUNE_WORLD_SIZE='two' is not an integer"):
        world.check_world_size(1, {"KUBETUNE_WORLD_SIZE": "two"})


def test_trainable_digest_covers_exactly_the_trainable_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    before = world.trainable_digest(model)
    assert before.startswith("sha256:") and before == world.trainable_digest(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # frozen: not part of the digest
    assert world.trainable_digest(model) == before
    with torch.no_grad():
        model[1].bias[0] += 1e-6  # any change of a trainable bit is
    assert world.trainable_digest(model) != before


def test_alone_every_rank_decision_is_its_own():
    assert world.agree(True) is True and world.agree(False) is False
    world.barrier()  # no process group: returns at once
    facts = world.WorldFacts(2, "ddp", "gloo", ["sha256:a", "sha256:b"])
    assert facts.replicas_in_sync is False
    assert facts.to_dict()["replicasInSync"] is False
    assert world.WorldFacts(1, "single", None, None).to_dict() == {
        "worldSize": 1, "strategy": "single", "backend": None, "replicaDigests": None, "replicasInSync": None,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- stall


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_fires_once_after_the_timeout_without_beats():
    clock = FakeClock()
    fired: list[float] = []
    done = threading.Event()
    dog = stall.Watchdog(30, lambda idle: (fired.append(idle), done.set()), clock=clock, poll=0.01)
    dog.start()
    for _ in range(10):  # beats keep it quiet even though far more than 30 s pass in total
        clock.now += 20
        dog.beat()
        time.sleep(0.03)
    assert fired == []
    clock.now += 31
    assert done.wait(5), "the watchdog did not fire"
    time.sleep(0.05)
    assert fired == [31]  # once
    dog.stop()


def test_watchdog_stopped_never_fires():
    clock = FakeClock()
    fired: list[float] = []
    dog = stall.Watchdog(10, fired.append, clock=clock, poll=0.01)
    dog.start()
    dog.stop()
    clock.now += 100
    time.sleep(0.1)
    assert fired == []


def test_a_stall_writes_the_termination_message_reports_and_exits(tmp_path, monkeypatch, capsys):
    config = job_config(
        tmp_path, tmp_path / "model", tmp_path / "data.jsonl", training={"stallTimeoutSeconds": 10}
    )
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv(termination.ENV_TERMINATION_LOG, str(termination_log))
    monkeypatch.delenv("RANK", raising=False)
    exits: list[int] = []
    callback = stall.StallCallback(config, exit=exits.append)
    assert callback.timeout == 10
    state = SimpleNamespace(global_step=7, max_steps=40)
    callback.on_step_end(None, state, None)
    callback._stalled(12.0)
    message = termination_log.read_text()
    assert message == (
        "Stalled: no training step finished for 10s (training.stallTimeoutSeconds) after step 7 of 40; "
        "ending this attempt so that the next one resumes from the latest checkpoint"
    )
    assert exits == [termination.STALLED_EXIT_CODE]
    assert f"stalled: {message}" in capsys.readouterr().out  # rank 0's report (local runs: the console)


def test_termination_message_is_skipped_where_there_is_none(tmp_path):
    assert termination.write("x", tmp_path / "no" / "such" / "dir" / "log") is False
    assert termination.write("y" * 5000, tmp_path / "log") is True
    assert len((tmp_path / "log").read_text()) == 4096  # what the kubelet keeps


def test_the_launch_exits_with_the_stall_code_only_for_a_fresh_stalled_message(tmp_path):
    from kubetune_trainer.launch import stalled_exit_code

    log = tmp_path / "termination-log"
    env = {termination.ENV_TERMINATION_LOG: str(log)}
    started = time.time()
    assert stalled_exit_code(1, started, env) == 1  # no message
    log.write_text("Stalled: no training step finished for 10s")
    assert stalled_exit_code(1, started, env) == termination.STALLED_EXIT_CODE
    assert stalled_exit_code(0, started, env) == 0
    assert stalled_exit_code(1, started + 3600, env) == 1  # written before this launch: not its reason
    log.write_text("something else")
    assert stalled_exit_code(1, started, env) == 1


def test_stall_timeout_is_validated():
    from pydantic import ValidationError

    from kubetune.api.v1alpha1 import FineTuneJobSpec

    base = {"model": {"uri": "hf://o/m"}, "dataset": {"uri": "hf://o/d"}, "output": {"uri": "pvc://c/o"}}
    assert FineTuneJobSpec.model_validate(base).training.stall_timeout_seconds == 1800
    with pytest.raises(ValidationError, match="stallTimeoutSeconds"):
        FineTuneJobSpec.model_validate({**base, "training": {"stallTimeoutSeconds": 5}})


def test_hang_hook_only_with_both_env_vars(tmp_path, monkeypatch):
    config = job_config(tmp_path, tmp_path / "model", tmp_path / "data.jsonl")
    monkeypatch.delenv(stall.ENV_TEST_HANG_RANK, raising=False)
    monkeypatch.delenv(stall.ENV_TEST_HANG_AT_STEP, raising=False)
    assert [type(c).__name__ for c in stall.callbacks(config)] == ["StallCallback"]
    monkeypatch.setenv(stall.ENV_TEST_HANG_RANK, "1")
    assert [type(c).__name__ for c in stall.callbacks(config)] == ["StallCallback"]
    monkeypatch.setenv(stall.ENV_TEST_HANG_AT_STEP, "3")
    assert [type(c).__name__ for c in stall.callbacks(config)] == ["StallCallback", "HangForTests"]
