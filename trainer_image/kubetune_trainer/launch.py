"""`kubetune-trainer launch`: start the training with one process per GPU (or per CPU node) on every node.

The pod's environment says where it is in the run (``KUBETUNE_NODE_RANK`` from the Indexed Job's
completion index, ``KUBETUNE_NUM_NODES``, ``KUBETUNE_GPUS_PER_NODE``, the rendezvous host and port at
pod 0) and the rendered spec says how (``distributed.strategy``, ``resources``, ``training.precision``).

- A world of one process (one node, at most one GPU): the trainer runs as this process
  (``kubetune-trainer train`` is exec'ed, so SIGTERM from the kubelet reaches it directly).
- Otherwise: ``accelerate launch`` (torchrun underneath) with a generated accelerate config (DDP, FSDP or
  DeepSpeed) starts one process per GPU, or one per node on CPU nodes (DDP with gloo); this process
  forwards SIGTERM/SIGINT to the workers and exits with the child's exit code. torchrun's agent watches
  the workers: one that dies ends the others and the launch (non-zero), it never hangs.
- ``kubetune train --local --processes N`` plans the same way for N processes on this machine
  (``local_facts``).

The environment is read strictly: a multi-node run without a node rank, or a rank that disagrees with the
completion index, is an error, never a silent world of one. The workers get ``KUBETUNE_WORLD_SIZE``, and
the training checks the world it really joined against it (``world.check_world_size``).

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from kubetune.api.v1alpha1 import PEFT_METHODS, TARGET_LOCAL, FineTuneJobSpec, TrainerConfig
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

from . import termination
from .world import ENV_WORLD_SIZE

log = logging.getLogger("kubetune_trainer.launch")

# Set by the Job controller in every pod of an Indexed Job; the fallback for KUBETUNE_NODE_RANK.
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# Optional overrides (not set by the operator; for operations and debugging).
ENV_RDZV_BACKEND = "KUBETUNE_RDZV_BACKEND"  # static (default) | c10d
ENV_LAUNCH_DIR = "KUBETUNE_LAUNCH_DIR"  # where the generated accelerate/DeepSpeed configs go


class LaunchError(Exception):
    """The pod's environment or the spec cannot be launched; the message says what to fix."""


@dataclass(frozen=True)
class EnvFacts:
    """This pod's place in the run, from its environment (or the spec where the env is silent).

    ``gpus_per_node`` 0 means CPU nodes: ``cpu_processes`` processes per node (1 in pods; N for
    ``kubetune train --local --processes N``), DDP with gloo."""

    node_rank: int = 0
    num_nodes: int = 1
    gpus_per_node: int = 0
    master_addr: str | None = None
    master_port: int = RENDEZVOUS_PORT
    rdzv_backend: str = "static"
    cpu_processes: int = 1

    @property
    def use_cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def processes_per_node(self) -> int:
        return self.cpu_processes if self.use_cpu else self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node


@overload
def _int_env(env: Mapping[str, str], name: str, default: int) -> int: ...
@overload
def _int_env(env: Mapping[str, str], name: str, default: None) -> int | None: ...
def _int_env(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def node_rank(env: Mapping[str, str], num_nodes: int) -> int:
    """KUBETUNE_NODE_RANK, else JOB_COMPLETION_INDEX (the operator sets both from the completion index).

    With more than one node a missing rank is an error: every pod would think it is node 0 and wait for a
    world that never forms (or, worse, train alone). Two values that disagree are an error too."""
    ours = _int_env(env, ENV_NODE_RANK, None)
    index = _int_env(env, ENV_COMPLETION_INDEX, None)
    if ours is not None and index is not None and ours != index:
        raise LaunchError(
            f"{ENV_NODE_RANK}={ours} but {ENV_COMPLETION_INDEX}={index}: the node rank must be the Indexed "
            f"Job's completion index; remove {ENV_NODE_RANK} from the pod's env or make them agree"
        )
    rank = ours if ours is not None else index
    if rank is None:
        if num_nodes > 1:
            raise LaunchError(
                f"{ENV_NUM_NODES}={num_nodes} but neither {ENV_NODE_RANK} nor {ENV_COMPLETION_INDEX} is set: "
                "a multi-node run needs each pod's node rank (run it as an Indexed Job)"
            )
        rank = 0
    return rank


def env_facts(env: Mapping[str, str], spec: FineTuneJobSpec) -> EnvFacts:
    """Read the pod's place in the run; the spec's resources fill in what the env does not say."""
    num_nodes = _int_env(env, ENV_NUM_NODES, spec.resources.nodes)
    gpus = _int_env(env, ENV_GPUS_PER_NODE, spec.resources.gpus_per_node)
    port = _int_env(env, ENV_MASTER_PORT, RENDEZVOUS_PORT)
    addr = env.get(ENV_MASTER_ADDR, "").strip() or None
    backend = env.get(ENV_RDZV_BACKEND, "").strip() or "static"
    if num_nodes < 1:
        raise LaunchError(f"{ENV_NUM_NODES}={num_nodes}: a run has at least one node")
    if gpus < 0:
        raise LaunchError(f"{ENV_GPUS_PER_NODE}={gpus}: cannot be negative")
    rank = node_rank(env, num_nodes)
    if not 0 <= rank < num_nodes:
        raise LaunchError(
            f"node rank {rank} is outside 0..{num_nodes - 1} ({ENV_NODE_RANK}/{ENV_COMPLETION_INDEX}, {ENV_NUM_NODES})"
        )
    if num_nodes > 1 and not addr:
        raise LaunchError(f"{ENV_MASTER_ADDR} must name pod 0 (the rendezvous host) when nodes > 1")
    if not 0 < port < 65536:
        raise LaunchError(f"{ENV_MASTER_PORT}={port} is not a TCP port")
    if backend not in ("static", "c10d"):
        raise LaunchError(f"{ENV_RDZV_BACKEND}={backend!r}: use static or c10d")
    return EnvFacts(rank, num_nodes, gpus, addr, port, backend)


def local_facts(processes: int, visible_gpus: int) -> EnvFacts:
    """``kubetune train --local --processes N``: one node, N processes over N of the visible GPUs, or N CPU
    processes (gloo) when there is no GPU. Port 0: accelerate picks a free one."""
    if processes < 1:
        raise LaunchError(f"--processes {processes}: run at least one process")
    if visible_gpus and processes > visible_gpus:
        raise LaunchError(
            f"--processes {processes} but only {visible_gpus} GPU(s) are visible: use at most {visible_gpus} "
            "(one process per GPU), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run CPU processes"
        )
    if visible_gpus:
        return EnvFacts(gpus_per_node=processes, master_port=0)
    return EnvFacts(gpus_per_node=0, cpu_processes=processes, master_port=0)


def resolve_strategy(spec: FineTuneJobSpec, facts: EnvFacts) -> str:
    """single | ddp | fsdp | deepspeed. ``auto``: one process when the world is one process; FSDP for full
    fine-tunes of causal LMs on GPUs (the weights and optimizer state are what does not fit); DDP otherwise
    (adapters, classifiers and seq2seq models fit on each GPU; CPU processes use DDP with gloo)."""
    if facts.world_size <= 1:
        return "single"
    strategy = spec.distributed.strategy
    if facts.use_cpu and strategy in ("fsdp", "deepspeed"):
        raise LaunchError(
            f"distributed.strategy {strategy} needs GPUs (accelerate enables {strategy} only on GPUs, "
            "not for CPU processes): use strategy ddp or auto on CPU, or set resources.gpusPerNode"
        )
    if strategy != "auto":
        return strategy
    if spec.method.type == "full" and spec.model.task == "causal-lm" and not facts.use_cpu:
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
    adapters = spec.method.type in PEFT_METHODS
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
        "num_processes": facts.world_size,
        "machine_rank": facts.node_rank,
        "main_process_port": facts.master_port,
        "rdzv_backend": facts.rdzv_backend,
        "same_network": True,
        "gpu_ids": "all",
        "use_cpu": facts.use_cpu,
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
        config["mixed_precision"] = "no" if facts.use_cpu else mixed_precision(spec.training.precision)
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
    """What ``main`` will do: the command, its files (name -> content), the env it adds, and why."""

    strategy: str
    facts: EnvFacts
    command: list[str]
    files: dict[str, str] = field(default_factory=dict)
    in_process: bool = False

    @property
    def env(self) -> dict[str, str]:
        """What the workers get on top of this process's environment."""
        return {ENV_WORLD_SIZE: str(self.facts.world_size)}

    def describe(self) -> str:
        """One line for people: world size, strategy and where the processes are."""
        device = "CPU (gloo)" if self.facts.use_cpu else "GPU"
        where = (
            f"{self.facts.num_nodes} node(s) x {self.facts.processes_per_node} process(es)"
            if not self.in_process
            else "this process"
        )
        return f"world size {self.facts.world_size}: {self.strategy} on {device}, {where}"


def plan_launch(
    spec: FineTuneJobSpec, env: Mapping[str, str], launch_dir: str, train_cmd: Sequence[str] | None = None
) -> LaunchPlan:
    """Pure: spec + environment -> the command to run and the config files to write under LAUNCH_DIR."""
    return plan_for(spec, env_facts(env, spec), launch_dir, train_cmd)


def plan_for(
    spec: FineTuneJobSpec, facts: EnvFacts, launch_dir: str, train_cmd: Sequence[str] | None = None
) -> LaunchPlan:
    """Pure: spec + this node's facts -> the plan (used by pods and by ``kubetune train --local``)."""
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


def _children(pid: int) -> list[int]:
    """PIDs whose parent is PID (Linux /proc); empty when it cannot be read."""
    found = []
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
        # pid (comm) state ppid ... ; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def run_forwarding_signals(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run CMD in its own process group, forward SIGTERM/SIGINT/SIGHUP and return its exit code
    (128+N when it died of signal N).

    The first signal goes to the workers, the child's children (torchrun's agent starts each worker in a
    session of its own, so they are found by parent, not by process group), and not to the agent, which
    would otherwise kill them 30 s later while they checkpoint; when the child has no children it goes to
    the child. A second signal goes to the child's process group and the workers.
    """
    child = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        workers = _children(child.pid)
        targets = workers or [child.pid]
        log.info(
            "got %s%s: forwarding it to %s",
            signal.Signals(signum).name,
            " again" if len(received) > 1 else "",
            targets,
        )
        if len(received) > 1:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

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
    parser.add_argument(
        "--local",
        action="store_true",
        help="the config is a local run's (file:// URIs, as `kubetune train --local` writes it): "
        "the pod's launch on this machine, e.g. several launchers as the nodes of one run",
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
        train_cmd = [*trainer_command(), "--local"] if args.local else None
        plan = plan_launch(config.job.spec, env, launch_dir, train_cmd)
    except LaunchError as exc:
        log.error("cannot launch: %s", exc)
        return 2

    facts = plan.facts
    log.info(
        "node %d of %d, %s%s",
        facts.node_rank,
        facts.num_nodes,
        plan.describe(),
        f", rendezvous {facts.master_addr or 'localhost'}:{facts.master_port} ({facts.rdzv_backend})"
        if not plan.in_process
        else "",
    )
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
    visible = _visible_gpus()
    if not facts.use_cpu and visible is not None and visible < facts.gpus_per_node:
        if not plan.in_process:
            log.error(
                "%d GPU(s) per node requested but %d visible: the run cannot have the world size it asks for "
                "(check the GPU device plugin and the pod's resources)",
                facts.gpus_per_node,
                visible,
            )
            return 2
        log.warning("%d GPU requested but %d visible: training on the CPU", facts.gpus_per_node, visible)
    return start(plan, env)


def start(plan: LaunchPlan, env: Mapping[str, str]) -> int:
    """Write the plan's files and run it: exec the trainer (one process) or run accelerate (several)."""
    for path, content in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    env = {**env, **plan.env}
    sys.stdout.flush()
    sys.stderr.flush()
    if plan.in_process:
        # Become the trainer: same PID, so the kubelet's SIGTERM reaches it without a middleman.
        os.execve(plan.command[0], plan.command, env)
    started = time.time()
    code = run_forwarding_signals(plan.command, env)
    return stalled_exit_code(code, started, env)


def stalled_exit_code(code: int, started: float, env: Mapping[str, str]) -> int:
    """torchrun's agent exits 1 whatever its workers' codes were: when a worker ended the attempt as
    Stalled (its termination message, written during this launch, says so), exit with the stall's code,
    as a single-process trainer does, so that the pod's exit code says it too."""
    if code != 0 and termination.stalled_since(started, env):
        return termination.STALLED_EXIT_CODE
    return code


if __name__ == "__main__":
    sys.exit(main())
