"""`kubetune-trainer launch`: the generated accelerate/DeepSpeed configs (checked by accelerate's own
launcher code), the pod-env parsing, and the launcher's signal forwarding with a real child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune_trainer import launch
from kubetune_trainer.launch import EnvFacts, LaunchError, env_facts, plan_launch
from tests.support.waiting import wait_for

pytestmark = pytest.mark.trainer

TRAIN = ["kubetune-trainer", "train"]


def spec(**over) -> FineTuneJobSpec:
    data = {
        "model": {"uri": "hf://org/llama"},
        "dataset": {"uri": "hf://org/data"},
        "output": {"uri": "pvc://models/out"},
    }
    for key, value in over.items():
        data.setdefault(key, {}).update(value)
    return FineTuneJobSpec.model_validate(data)


def pod_env(rank: int | None = None, nodes: int = 1, gpus: int = 1, addr: str | None = None, **extra) -> dict:
    env = {"KUBETUNE_NUM_NODES": str(nodes), "KUBETUNE_GPUS_PER_NODE": str(gpus), **extra}
    if rank is not None:
        env["KUBETUNE_NODE_RANK"] = str(rank)
    if addr:
        env["KUBETUNE_MASTER_ADDR"] = addr
    return env


def validated_by_accelerate(plan, tmp_path: Path):
    """Write the plan's files and run accelerate's own argument validation on its command line,
    then build the environment accelerate would give the workers."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    for path, content in plan.files.items():
        Path(path).write_text(content)
    assert plan.command[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(plan.command[3:])
    args, _defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""
        _cmd, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env, mp_from_config


# ---------------------------------------------------------------------------------------------- env


def test_env_single_node_defaults_come_from_the_spec():
    facts = env_facts({}, spec(resources={"gpusPerNode": 0}))
    assert facts == EnvFacts(node_rank=0, num_nodes=1, gpus_per_node=0, master_addr=None, master_port=29500)


def test_env_node_rank_from_completion_index_when_kubetune_rank_missing():
    env = pod_env(nodes=3, gpus=8, addr="ftj-trainer-0.ftj-trainer", JOB_COMPLETION_INDEX="2")
    facts = env_facts(env, spec())
    assert (facts.node_rank, facts.num_nodes, facts.gpus_per_node) == (2, 3, 8)
    assert facts.master_addr == "ftj-trainer-0.ftj-trainer"
    assert facts.world_size == 24
    # the operator sets both from the completion index: they agree
    assert env_facts({**env, "KUBETUNE_NODE_RANK": "2"}, spec()).node_rank == 2
    # an empty KUBETUNE_NODE_RANK (annotation not there) falls back to the index
    assert env_facts({**env, "KUBETUNE_NODE_RANK": ""}, spec()).node_rank == 2


def test_env_cpu_nodes_run_one_process_each():
    env = pod_env(nodes=2, gpus=0, addr="127.0.0.1", JOB_COMPLETION_INDEX="1")
    facts = env_facts(env, spec(resources={"gpusPerNode": 0}))
    assert facts.use_cpu and (facts.node_rank, facts.processes_per_node, facts.world_size) == (1, 1, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (pod_env(rank=2, nodes=2, gpus=1, addr="h"), "outside 0..1"),
        (pod_env(rank=0, nodes=2, gpus=1), "KUBETUNE_MASTER_ADDR"),
        ({"KUBETUNE_NUM_NODES": "two"}, "not an integer"),
        (pod_env(nodes=2, gpus=1, addr="h"), "neither KUBETUNE_NODE_RANK nor JOB_COMPLETION_INDEX"),
        (pod_env(rank=1, nodes=2, gpus=1, addr="h", JOB_COMPLETION_INDEX="0"), "must be the Indexed Job"),
        (pod_env(nodes=2, gpus=1, addr="h", JOB_COMPLETION_INDEX="one"), "JOB_COMPLETION_INDEX='one'"),
        (pod_env(gpus=2, KUBETUNE_MASTER_PORT="70000"), "not a TCP port"),
        (pod_env(gpus=2, KUBETUNE_RDZV_BACKEND="etcd"), "static or c10d"),
    ],
)
def test_env_errors_say_what_to_fix(env, message):
    with pytest.raises(LaunchError, match=message):
        env_facts(env, spec())


def test_a_multi_node_env_read_wrongly_never_becomes_a_world_of_one(tmp_path):
    """No rank in a 2-node pod: an error, not a plan for a single process."""
    with pytest.raises(LaunchError, match="node rank"):
        plan_launch(spec(resources={"nodes": 2}), {"KUBETUNE_MASTER_ADDR": "h"}, str(tmp_path), TRAIN)


def test_local_facts():
    assert launch.local_facts(2, 0) == EnvFacts(gpus_per_node=0, cpu_processes=2, master_port=0)
    assert launch.local_facts(2, 4).gpus_per_node == 2
    with pytest.raises(LaunchError, match="only 1 GPU"):
        launch.local_facts(2, 1)
    with pytest.raises(LaunchError, match="at least one process"):
        launch.local_facts(0, 0)


# ---------------------------------------------------------------------------------------------- plans


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("strategy", ["auto", "ddp", "fsdp", "deepspeed"])
def test_at_most_one_gpu_runs_the_trainer_in_process(tmp_path, gpus, strategy):
    plan = plan_launch(spec(distributed={"strategy": strategy}), pod_env(gpus=gpus), str(tmp_path), TRAIN)
    assert plan.in_process and plan.strategy == "single"
    assert plan.command == TRAIN
    assert plan.files == {}


def test_ddp_single_node_multi_gpu(tmp_path):
    plan = plan_launch(spec(distributed={"strategy": "ddp"}), pod_env(gpus=4), str(tmp_path), TRAIN)
    assert plan.strategy == "ddp" and not plan.in_process
    assert plan.command[-3:] == ["--no_python", *TRAIN]
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert config["distributed_type"] == "MULTI_GPU"
    assert (config["num_machines"], config["num_processes"], config["machine_rank"]) == (1, 4, 0)
    assert "main_process_ip" not in config  # one node: localhost
    args, env, _ = validated_by_accelerate(plan, tmp_path)
    assert args.multi_gpu and args.num_processes == 4


def test_ddp_multi_node_rank_and_rendezvous(tmp_path):
    env = pod_env(nodes=4, gpus=8, addr="llama-trainer-0.llama-trainer.ns.svc", JOB_COMPLETION_INDEX="3")
    plan = plan_launch(spec(method={"type": "lora"}), env, str(tmp_path), TRAIN)
    assert plan.strategy == "ddp"  # auto, adapters fit on every GPU
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert (config["num_machines"], config["num_processes"], config["machine_rank"]) == (4, 32, 3)
    assert config["main_process_ip"] == "llama-trainer-0.llama-trainer.ns.svc"
    assert config["main_process_port"] == 29500
    assert config["rdzv_backend"] == "static"
    args, _env, _ = validated_by_accelerate(plan, tmp_path)
    assert (args.num_machines, args.machine_rank, args.main_process_ip) == (
        4,
        3,
        "llama-trainer-0.llama-trainer.ns.svc",
    )
    assert args.rdzv_backend == "static"


def test_cpu_processes_are_ddp_with_use_cpu(tmp_path):
    plan = launch.plan_for(spec(method={"type": "full"}), launch.local_facts(2, 0), str(tmp_path), TRAIN)
    assert plan.strategy == "ddp"  # auto on CPU: DDP (accelerate has no FSDP for CPU processes)
    assert plan.env == {"KUBETUNE_WORLD_SIZE": "2"}
    assert "world size 2: ddp on CPU (gloo)" in plan.describe()
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert (config["num_processes"], config["use_cpu"], config["mixed_precision"]) == (2, True, "no")
    args, env, _ = validated_by_accelerate(plan, tmp_path)
    assert args.num_processes == 2 and args.use_cpu
    assert env["OMP_NUM_THREADS"]  # accelerate sets the CPU threads per process


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_on_cpu_are_refused(tmp_path, strategy):
    with pytest.raises(LaunchError, match=f"{strategy} needs GPUs"):
        launch.plan_for(spec(distributed={"strategy": strategy}), launch.local_facts(2, 0), str(tmp_path))


def test_c10d_rendezvous_override(tmp_path):
    env = pod_env(
        rank=1, nodes=2, gpus=2, addr="h0", KUBETUNE_RDZV_BACKEND="c10d", KUBETUNE_MASTER_PORT="29600"
    )
    plan = plan_launch(spec(), env, str(tmp_path), TRAIN)
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert (config["rdzv_backend"], config["main_process_port"]) == ("c10d", 29600)
    validated_by_accelerate(plan, tmp_path)


@pytest.mark.parametrize(
    ("method", "state_dict"), [("full", "SHARDED_STATE_DICT"), ("lora", "FULL_STATE_DICT")]
)
def test_fsdp_config(tmp_path, monkeypatch, method, state_dict):
    env = pod_env(rank=0, nodes=2, gpus=8, addr="h0")
    plan = plan_launch(
        spec(method={"type": method}, distributed={"strategy": "fsdp"}, training={"precision": "bf16"}),
        env,
        str(tmp_path),
        TRAIN,
    )
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert config["distributed_type"] == "FSDP"
    assert config["mixed_precision"] == "bf16"
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == state_dict
    assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
    args, worker_env, _ = validated_by_accelerate(plan, tmp_path)
    assert args.use_fsdp
    assert worker_env["ACCELERATE_USE_FSDP"] == "true"
    assert worker_env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert worker_env["FSDP_STATE_DICT_TYPE"] == state_dict
    assert worker_env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # The plugin the workers build from that environment accepts it (it needs a device to exist).
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    if not torch.cuda.is_available():
        return

    for key, value in worker_env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.sync_module_states and plugin.cpu_ram_efficient_loading and plugin.use_orig_params
    assert plugin.state_dict_type.name == state_dict


def test_auto_full_finetune_of_a_causal_lm_is_fsdp(tmp_path):
    plan = plan_launch(spec(method={"type": "full"}), pod_env(gpus=2), str(tmp_path), TRAIN)
    assert plan.strategy == "fsdp"
    plan = plan_launch(
        spec(method={"type": "full"}, model={"task": "sequence-classification", "numLabels": 2}),
        pod_env(gpus=2),
        str(tmp_path),
        TRAIN,
    )
    assert plan.strategy == "ddp"


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_deepspeed_config(tmp_path, stage, precision):
    env = pod_env(rank=1, nodes=2, gpus=4, addr="h0")
    job = spec(
        distributed={"strategy": "deepspeed", "deepspeedStage": stage}, training={"precision": precision}
    )
    plan = plan_launch(job, env, str(tmp_path), TRAIN)
    assert plan.strategy == "deepspeed"
    ds_path = str(tmp_path / "deepspeed.json")
    ds = json.loads(plan.files[ds_path])
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    expected = {
        "auto": ("auto", "auto"),
        "bf16": (True, False),
        "fp16": (False, True),
        "fp32": (False, False),
    }[precision]
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == expected
    assert ds["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    config = json.loads(plan.files[str(tmp_path / "accelerate.json")])
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["deepspeed_config_file"] == ds_path
    assert config["deepspeed_config"]["zero3_init_flag"] is (stage == 3)
    assert "mixed_precision" not in config  # accelerate refuses it next to a DeepSpeed config file
    args, worker_env, mp_from_config = validated_by_accelerate(plan, tmp_path)
    assert args.use_deepspeed and not mp_from_config
    assert worker_env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == ds_path
    assert (args.num_machines, args.machine_rank) == (2, 1)


def test_deepspeed_config_is_what_transformers_accepts(tmp_path):
    """transformers' HfDeepSpeedConfig (what Trainer uses) reads the generated file and fills 'auto'."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    pytest.importorskip("deepspeed", reason="deepspeed is only in images built with INSTALL_DEEPSPEED=1")
    ds = launch.deepspeed_config(spec(distributed={"strategy": "deepspeed", "deepspeedStage": 3}))
    cfg = HfDeepSpeedConfig(ds)
    assert cfg.is_zero3()


# ---------------------------------------------------------------------------------------------- process


def test_dry_run_prints_the_plan(tmp_path):
    config = {
        "job": {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "ftj", "namespace": "ns"},
            "spec": spec(distributed={"strategy": "fsdp"}).to_dict(),
        },
        "runtime": {"runId": "abc", "outputDir": str(tmp_path / "out")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    env = {
        **os.environ,
        **pod_env(rank=1, nodes=2, gpus=2, addr="ftj-trainer-0.ftj-trainer"),
        "KUBETUNE_CONFIG": str(path),
        "KUBETUNE_LAUNCH_DIR": str(tmp_path / "launch"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.launch", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, cwd=Path(launch.__file__).parents[2],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["strategy"] == "fsdp"
    assert "command: " in out.stderr and "accelerate.commands.launch" in out.stderr
    assert str(tmp_path / "launch" / "accelerate.json") in plan["files"]


def test_bad_env_exits_2_with_a_message(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({
        "job": {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                "spec": spec().to_dict()},
        "runtime": {"runId": "abc", "outputDir": str(tmp_path)},
    }))  # fmt: skip
    env = {**os.environ, **pod_env(rank=0, nodes=2, gpus=1), "KUBETUNE_CONFIG": str(path)}
    out = subprocess.run([sys.executable, "-m", "kubetune_trainer.launch"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=Path(launch.__file__).parents[2])  # fmt: skip
    assert out.returncode == 2
    assert "KUBETUNE_MASTER_ADDR" in out.stderr


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    out = sys.argv[1]
    def on_term(signum, frame):
        with open(out, "a") as f:
            f.write(f"{signal.Signals(signum).name} pid={os.getpid()}\\n")
        sys.exit(int(sys.argv[2]))
    signal.signal(signal.SIGTERM, on_term)
    with open(out + ".ready", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    sys.exit(99)
    """
)

LAUNCHER = textwrap.dedent(
    """
    import sys
    from kubetune_trainer.launch import run_forwarding_signals
    sys.exit(run_forwarding_signals(sys.argv[1:]))
    """
)


def _start_launcher(tmp_path: Path, child_args: list[str]) -> subprocess.Popen:
    root = Path(launch.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "operator"), str(root / "trainer_image")])}
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *child_args], env=env)


def test_sigterm_is_forwarded_and_the_exit_code_propagates(tmp_path):
    record = tmp_path / "signals"
    launcher = _start_launcher(tmp_path, [sys.executable, "-c", CHILD, str(record), "7"])
    wait_for(Path(str(record) + ".ready").exists, 60, 0.05, "the child's ready file")
    child_pid = int(Path(str(record) + ".ready").read_text())
    assert os.getpgid(child_pid) == child_pid != os.getpgid(launcher.pid)  # its own process group
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 7
    assert record.read_text() == f"SIGTERM pid={child_pid}\n"


def test_sigterm_goes_to_the_workers_not_the_agent(tmp_path):
    """Like accelerate's torchrun agent: a parent that ignores SIGTERM and waits for its workers."""
    record = tmp_path / "signals"
    agent = textwrap.dedent(
        f"""
        import signal, subprocess, sys
        signal.signal(signal.SIGTERM, lambda *a: open({str(record)!r} + ".agent", "w").write("agent got it"))
        workers = [subprocess.Popen([sys.executable, "-c", {CHILD!r}, {str(record)!r} + str(i), "3"]) for i in range(2)]
        sys.exit(max(w.wait() for w in workers) + 10)
        """
    )
    launcher = _start_launcher(tmp_path, [sys.executable, "-c", agent])
    for i in range(2):
        wait_for(Path(f"{record}{i}.ready").exists, 60, 0.05, f"child {i}'s ready file")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 13
    for i in range(2):
        assert Path(f"{record}{i}").read_text().startswith("SIGTERM")
    assert not Path(str(record) + ".agent").exists()


def test_child_killed_by_a_signal_exits_128_plus_n(tmp_path):
    root = Path(launch.__file__).parents[2]
    code = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "operator"), str(root / "trainer_image")])},
        timeout=60,
    ).returncode  # fmt: skip
    assert code == 128 + signal.SIGKILL
