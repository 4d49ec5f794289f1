#!/usr/bin/env python3
"""The operator's memory (RSS), code against code, in one run on one control plane.

    .venv/bin/python hack/bench_operator_rss.py --tree a8e4d39 --tree . [--jobs 1100] [--rounds 2]

Each --tree is a directory with the repository's layout, or a git revision (checked out as a worktree under
.cluster/bench/trees/). Rounds alternate the trees (a, b, a, b, ...) so that the machine's drift falls on
both. In each round, for each tree: a new namespace, `kubetune operator` of that tree started on it alone
(8 workers, MALLOC_ARENA_MAX=2 as in the operator image), JOBS suspended FineTuneJobs created at once (16
client threads), and once its reconcile counter stopped moving:

- steady: the operator's RSS with them all reconciled;
- after a restart: the operator stopped (SIGTERM) and started again on the same objects (it lists them and
  reconciles each once), its RSS once the reconciles stopped; and the RSS every half second since it
  answered /healthz (where the restart's memory comes from).

Objects are left in their namespaces (the next round's operator does not watch them); the namespaces are
deleted at the end. A figure is one process's resident set: compare trees within one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import psutil  # noqa: E402
from kubernetes import client, config  # noqa: E402

from hack.bench_operator import settle  # noqa: E402
from tests.support import controlplane as cpmod  # noqa: E402
from tests.support.crds import apply_crds  # noqa: E402
from tests.support.objects import tiny_job  # noqa: E402
from tests.support.operator import Operator  # noqa: E402

TREES_DIR = REPO / ".cluster" / "bench" / "trees"


def tree_path(spec: str) -> Path:
    """SPEC as a directory, or a git revision checked out (detached) under TREES_DIR."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", spec], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = TREES_DIR / rev
    if not path.is_dir():
        TREES_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True)
    return path


def rss_mib(op: Operator) -> float:
    assert op.proc is not None
    return round(psutil.Process(op.proc.pid).memory_info().rss / 2**20, 1)


class Sampler:
    """The operator's RSS every SECONDS, from now until stop()."""

    def __init__(self, op: Operator, seconds: float = 0.5) -> None:
        self.op, self.seconds = op, seconds
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.samples.append((round(time.monotonic() - self._t0, 1), rss_mib(self.op)))
            except (psutil.Error, AssertionError):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def one_side(api: client.ApiClient, kubeconfig: str, tree: Path, namespace: str, jobs: int) -> dict[str, Any]:
    core, co = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    op = Operator(
        kubeconfig,
        REPO / ".cluster" / "bench" / namespace,
        namespaces=namespace,
        trace_reconciles=False,  # what users run: no log line per reconcile
        PYTHONPATH=f"{tree / 'operator'}:{tree / 'trainer_image'}",
        KUBETUNE_WORKERS="8",
        KUBETUNE_LOG_LEVEL="WARNING",
        MALLOC_ARENA_MAX="2",  # the operator image's setting (operator/Dockerfile)
    )
    op.start()
    try:
        empty = rss_mib(op)

        def create(i: int) -> None:
            co.create_namespaced_custom_object(
                "kubetune.io", "v1alpha1", namespace, "finetunejobs", tiny_job(f"j-{i}", suspend=True)
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(jobs)))
        reconciles = settle(op, 5.0, 600)
        steady = rss_mib(op)
        op.restart()
        sampler = Sampler(op)
        resync = settle(op, 5.0, 600)
        after = rss_mib(op)
        timeline = sampler.stop()
    finally:
        op.stop()
    return {
        "namespace": namespace,
        "empty": empty,
        "steady": steady,
        "after_restart": after,
        "reconciles": reconciles,
        "resync_reconciles": resync,
        "restart_timeline": timeline,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="a directory or a git revision (repeat)")
    ap.add_argument("--jobs", type=int, default=1100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    trees = {spec: tree_path(spec) for spec in args.tree}
    cp = cpmod.ControlPlane()
    cp.up()
    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    apply_crds(api)
    tag = time.strftime("%H%M%S")
    sides: list[dict[str, Any]] = []
    try:
        for round_ in range(args.rounds):
            for i, (spec, path) in enumerate(trees.items()):
                side = one_side(api, str(cp.kubeconfig), path, f"rss-{tag}-{round_}-{i}", args.jobs)
                side |= {"tree": spec, "round": round_ + 1, "load": round(psutil.getloadavg()[0], 2)}
                timeline = " ".join(f"{t}s:{m}" for t, m in side["restart_timeline"][:12])
                print(json.dumps({k: v for k, v in side.items() if k != "restart_timeline"}), flush=True)
                print(f"  restart, RSS by time since /healthz: {timeline}", flush=True)
                sides.append(side)
    finally:
        for side in sides:
            client.CoreV1Api(api).delete_namespace(side["namespace"])
    print(f"\n| tree | steady RSS (MiB) | after a restart (MiB) | {args.jobs} FineTuneJobs, rounds |")
    print("|---|---|---|---|")
    for spec in trees:
        mine = [s for s in sides if s["tree"] == spec]
        steady, after = [s["steady"] for s in mine], [s["after_restart"] for s in mine]
        print(
            f"| {spec} | median {round(statistics.median(steady), 1)} ({', '.join(map(str, steady))}) "
            f"| median {round(statistics.median(after), 1)} ({', '.join(map(str, after))}) | {len(mine)} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(sides, indent=1))


if __name__ == "__main__":
    main()
