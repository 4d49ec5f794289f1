"""`kubetune-trainer launch`: start the training with one process per GPU on every node.

The pod's environment says where it is in the run (``KUBETUNE_NODE_RANK`` from the Indexed Job's
completion index, ``KUBETUNE_NUM_NODES``, ``KUBETUNE_GPUS_PER_NODE``, the rendezvous host and port at
pod 0) and the rendered spec says how (``distributed.strategy``, ``resources``, ``training.precision``).

- At most one GPU in the whole run: the trainer runs as this process (``kubetune-trainer train`` is
  exec'ed, so SIGTERM from the kubelet reaches it directly).
- Otherwise: ``accelerate launch`` with a generated accelerate config (DDP, FSDP or DeepSpeed) starts
  one process per GPU; this process forwards SIGTERM/SIGINT to the workers and exits with the child's
  exit code.

Everything that decides something is a pure function of (spec, env facts) -> plan/dict, so it is tested
without GPUs; ``main`` only reads the environment, writes the files and starts the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import TARGET_LOCAL, FineTuneJobSpec, TrainerConfig
from kubetune.api.v1alpha1.trainerconfig import (
    CONFIG_PATH,
    ENV_CONFIG,
    ENV_GPUS_PER_NODE,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NODE_RANK,
    ENV_NUM_NODES,
    RENDEZVOUS_PORT,
    WORK_DIR,
)

log = logging.getLogger("kubetune_trainer.launch")

# Set by the Job controller in every pod of an Indexed Job; the fallback for KUBETUNE_NODE_RANK.
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# Optional overrides (not set by the operator; for operations and debugging).
ENV_RDZV_BACKEND = "KUBETUNE_RDZV_BACKEND"  # static (default) | c10d
ENV_LAUNCH_DIR = "KUBETUNE_LAUNCH_DIR"  # where the generated accelerate/DeepSpeed configs go

ADAPTER_METHODS = ("lora", "qlora", "ia3", "prefix-tuning", "prompt-tuning")
# Under FSDP, checkpoints of full fine-tunes are saved sharded (fast, any size); the final model must be
# gathered: train.py switches the plugin to this before its last save_model.
FINAL_FSDP_STATE_DICT_TYPE = "FULL_STATE_DICT"


class LaunchError(Exception):
    """The pod's environment or the spec cannot be launched; the message says what to fix."""


@dataclass(frozen=True)
class EnvFacts:
    """This pod's place in the run, from its environment (or the spec where the env is silent)."""

    node_rank: int = 0
    num_nodes: int = 1
    gpus_per_node: int = 0
    master_addr: str | None = None
    master_port: int = RENDEZVOUS_PORT
    rdzv_backend: str = "static"

    @property
    def world_size(self) -> int:
        return self.num_nodes * max(self.gpus_per_node, 1)

    @property
    def total_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def env_facts(env: Mapping[str, str], spec: FineTuneJobSpec) -> EnvFacts:
    """Read the pod's place in the run; the spec's resources fill in what the env does not say."""
    num_nodes = _int_env(env, ENV_NUM_NODES, spec.resources.nodes)
    gpus = _int_env(env, ENV_GPUS_PER_NODE, spec.resources.gpus_per_node)
    rank = _int_env(env, ENV_NODE_RANK, _int_env(env, ENV_COMPLETION_INDEX, 0))
    port = _int_env(env, ENV_MASTER_PORT, RENDEZVOUS_PORT)
    addr = env.get(ENV_MASTER_ADDR, "").strip() or None
    backend = env.get(ENV_RDZV_BACKEND, "").strip() or "static"
    if num_nodes < 1:
        raise LaunchError(f"{ENV_NUM_NODES}={num_nodes}: a run has at least one node")
    if gpus < 0:
        raise LaunchError(f"{ENV_GPUS_PER_NODE}={gpus}: cannot be negative")
    if not 0 <= rank < num_nodes:
        raise LaunchError(
            f"node rank {rank} is outside 0..{num_nodes - 1} ({ENV_NODE_RANK}, {ENV_NUM_NODES})"
        )
    if num_nodes > 1 and gpus < 1:
        raise LaunchError("more than one node needs GPUs: set resources.gpusPerNode >= 1")
    if num_nodes > 1 and not addr:
        raise LaunchError(f"{ENV_MASTER_ADDR} must name pod 0 (the rendezvous host) when nodes > 1")
    if not 0 < port < 65536:
        raise LaunchError(f"{ENV_MASTER_PORT}={port} is not a TCP port")
    if backend not in ("static", "c10d"):
        raise LaunchError(f"{ENV_RDZV_BACKEND}={backend!r}: use static or c10d")
    return EnvFacts(rank, num_nodes, gpus, addr, port, backend)


def resolve_strategy(spec: FineTuneJobSpec, facts: EnvFacts) -> str:
    """single | ddp | fsdp | deepspeed. ``auto``: one process when at most one GPU; FSDP for full
    fine-tunes of causal LMs (the weights and optimizer state are what does not fit); DDP otherwise
    (adapters, classifiers and seq2seq models fit on each GPU)."""
    if facts.total_gpus <= 1:
        return "single"
    strategy = spec.distributed.strategy
    if strategy != "auto":
        return strategy
    if spec.method.type == "full" and spec.model.task == "causal-lm":
        return "fsdp"
    return "ddp"


def mixed_precision(precision: str) -> str | None:
    """accelerate's mixed_precision for the spec's training.precision. ``auto`` leaves it to the
    trainer's TrainingArguments (bf16/fp16 there win over accelerate's default of "no")."""
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}.get(precision, "no")


def deepspeed_config(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The DeepSpeed JSON. Batch sizes, accumulation, clipping and (for precision auto) bf16/fp16 are
    "auto": transformers' Trainer fills them from its TrainingArguments, so they can never disagree."""
    stage = spec.distributed.deepspeed_stage
    precision = spec.training.precision
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "allgather_bucket_size": 5e8,
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1e9,
                "stage3_max_reuse_distance": 1e9,
                "sub_group_size": 1e9,
                # The final save_model writes a normal (consolidated 16-bit) checkpoint.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        del zero["allgather_bucket_size"]

    def enabled(kind: str) -> bool | str:
        return "auto" if precision == "auto" else precision == kind

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": enabled("bf16")},
        "fp16": {
            "enabled": enabled("fp16"),
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    return config


def fsdp_config(spec: FineTuneJobSpec) -> dict[str, Any]:
    """accelerate's fsdp_config (FSDP1 keys): full sharding, one FSDP unit per transformer block (the
    model's ``_no_split_modules``), weights loaded on rank 0 only and broadcast."""
    adapters = spec.method.type in ADAPTER_METHODS
    return {
        "fsdp_version": 1,
        "fsdp_sharding_strategy": "FULL_SHARD",
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        # Full fine-tunes checkpoint sharded (every rank writes its shard; resume at the same world
        # size); adapters are small, so their checkpoints are gathered and portable.
        "fsdp_state_dict_type": "FULL_STATE_DICT" if adapters else "SHARDED_STATE_DICT",
        "fsdp_offload_params": False,
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,  # required by cpu_ram_efficient_loading
        "fsdp_use_orig_params": True,  # mixed frozen/trainable parameters (PEFT) need it
        "fsdp_activation_checkpointing": False,  # gradient checkpointing comes from the trainer's args
    }


def accelerate_config(
    spec: FineTuneJobSpec, facts: EnvFacts, strategy: str, deepspeed_config_file: str | None = None
) -> dict[str, Any]:
    """The accelerate config file (``accelerate launch --config_file``) for a multi-process run."""
    if strategy not in ("ddp", "fsdp", "deepspeed"):
        raise LaunchError(f"no accelerate config for strategy {strategy!r}")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "num_machines": facts.num_nodes,
        "num_processes": facts.num_nodes * facts.gpus_per_node,
        "machine_rank": facts.node_rank,
        "main_process_port": facts.master_port,
        "rdzv_backend": facts.rdzv_backend,
        "same_network": True,
        "gpu_ids": "all",
        "use_cpu": False,
        "downcast_bf16": "no",
        "main_training_function": "main",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if facts.num_nodes > 1:
        config["main_process_ip"] = facts.master_addr
    if strategy == "ddp":
        config["distributed_type"] = "MULTI_GPU"
        config["mixed_precision"] = mixed_precision(spec.training.precision)
    elif strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["mixed_precision"] = mixed_precision(spec.training.precision)
        config["fsdp_config"] = fsdp_config(spec)
    else:
        if not deepspeed_config_file:
            raise LaunchError("strategy deepspeed needs the path of the DeepSpeed config file")
        config["distributed_type"] = "DEEPSPEED"
        # No mixed_precision here: with a DeepSpeed config file it comes from that file (accelerate
        # refuses both), and so do accumulation, clipping and the ZeRO stage.
        config["deepspeed_config"] = {
            "deepspeed_config_file": deepspeed_config_file,
            "zero3_init_flag": spec.distributed.deepspeed_stage == 3,
            "deepspeed_multinode_launcher": "standard",
        }
    return config


def trainer_command() -> list[str]:
    """The agreed in-process command: ``kubetune-trainer train``."""
    beside = Path(sys.executable).parent / "kubetune-trainer"  # the same environment's script, even off PATH
    exe = str(beside) if os.access(beside, os.X_OK) else shutil.which("kubetune-trainer")
    if exe:
        return [exe, "train"]
    return [
        sys.executable,
        "-c",
        "import sys; from kubetune_trainer.cli import main; sys.argv = ['kubetune-trainer', 'train']; sys.exit(main())",
    ]


def accelerate_command(config_file: str, train_cmd: Sequence[str]) -> list[str]:
    """``accelerate launch`` running TRAIN_CMD (an executable, not a python script) once per GPU."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config_file,
        "--no_python",
        *train_cmd,
    ]


@dataclass
class LaunchPlan:
    """What ``main`` will do: the command, its files (name -> content) and why."""

    strategy: str
    facts: EnvFacts
    command: list[str]
    files: dict[str, str] = field(default_factory=dict)
    in_process: bool = False


def plan_launch(
    spec: FineTuneJobSpec, env: Mapping[str, str], launch_dir: str, train_cmd: Sequence[str] | None = None
) -> LaunchPlan:
    """Pure: spec + environment -> the command to run and the config files to write under LAUNCH_DIR."""
    facts = env_facts(env, spec)
    strategy = resolve_strategy(spec, facts)
    train_cmd = list(train_cmd or trainer_command())
    if strategy == "single":
        return LaunchPlan(strategy, facts, train_cmd, in_process=True)
    files: dict[str, str] = {}
    ds_file = None
    if strategy == "deepspeed":
        ds_file = str(Path(launch_dir) / "deepspeed.json")
        files[ds_file] = json.dumps(deepspeed_config(spec), indent=2) + "\n"
    acc_file = str(Path(launch_dir) / "accelerate.json")
    files[acc_file] = json.dumps(accelerate_config(spec, facts, strategy, ds_file), indent=2) + "\n"
    return LaunchPlan(strategy, facts, accelerate_command(acc_file, train_cmd), files)


# ----------------------------------------------------------------------------------------------
# the thin process part


def _process_group_members(pgid: int) -> list[int]:
    """PIDs in process group PGID (Linux /proc); empty when it cannot be read."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ... ; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def run_forwarding_signals(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run CMD in its own process group, forward SIGTERM/SIGINT/SIGHUP and return its exit code
    (128+N when it died of signal N).

    The first signal goes to the workers (every process of the group but the launcher child, e.g.
    accelerate's torchrun agent, which would otherwise kill them 30 s later while they checkpoint);
    when the group has no other member it goes to the child. A second signal goes to the whole group.
    """
    child = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        try:
            if len(received) == 1:
                targets = [p for p in _process_group_members(child.pid) if p != child.pid] or [child.pid]
                log.info("got %s: forwarding it to %s", signal.Signals(signum).name, targets)
                for pid in targets:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            else:
                log.info(
                    "got %s again: forwarding it to process group %d", signal.Signals(signum).name, child.pid
                )
                os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


def load_trainer_config(path: str) -> TrainerConfig:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise LaunchError(f"cannot read the trainer config {path}: {exc.strerror}") from None
    # The operator already validated the job for the cluster; train re-reads it with the full checks.
    return TrainerConfig.model_validate(data, context={"target": TARGET_LOCAL})


def _visible_gpus() -> int | None:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - torch missing or broken: nothing to compare against
        return None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    if argv is None:
        argv = sys.argv[1:]
        if argv and argv[0] == "launch":
            argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="kubetune-trainer launch",
        description="Start the training: one process, or accelerate with one process per GPU on every node.",
    )
    parser.add_argument(
        "--config", default=None, help=f"trainer config (default ${ENV_CONFIG} or {CONFIG_PATH})"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (command and generated files) and exit"
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    config_path = args.config or env.get(ENV_CONFIG) or CONFIG_PATH
    env[ENV_CONFIG] = config_path
    try:
        config = load_trainer_config(config_path)
        launch_dir = env.get(ENV_LAUNCH_DIR) or (
            WORK_DIR if os.access(WORK_DIR, os.W_OK) else tempfile.mkdtemp(prefix="kubetune-launch-")
        )
        plan = plan_launch(config.job.spec, env, launch_dir)
    except LaunchError as exc:
        log.error("cannot launch: %s", exc)
        return 2

    facts = plan.facts
    log.info(
        "node %d of %d, %d GPU(s) per node, strategy %s%s",
        facts.node_rank,
        facts.num_nodes,
        facts.gpus_per_node,
        plan.strategy,
        f", rendezvous {facts.master_addr or 'localhost'}:{facts.master_port} ({facts.rdzv_backend})"
        if not plan.in_process
        else "",
    )
    visible = _visible_gpus()
    if not plan.in_process and visible is not None and visible != facts.gpus_per_node:
        log.warning("%d GPU(s) per node requested but %d visible", facts.gpus_per_node, visible)
    if plan.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            log.error(
                "distributed.strategy deepspeed needs the deepspeed package, which this image does not have; "
                "use an image built with INSTALL_DEEPSPEED=1, or strategy fsdp/ddp"
            )
            return 2
    for path, content in plan.files.items():
        log.info("%s:\n%s", path, content.rstrip())
    log.info("command: %s", shlex.join(plan.command))
    if args.dry_run:
        print(json.dumps({"strategy": plan.strategy, "command": plan.command, "files": plan.files}, indent=2))
        return 0
    for path, content in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    sys.stdout.flush()
    sys.stderr.flush()
    if plan.in_process:
        # Become the trainer: same PID, so the kubelet's SIGTERM reaches it without a middleman.
        os.execve(plan.command[0], plan.command, env)
    return run_forwarding_signals(plan.command, env)


if __name__ == "__main__":
    sys.exit(main())
