#!/usr/bin/env python3
"""The operator at scale: thousands of FineTuneJobs on the local control plane (not part of `make test`).

    .venv/bin/python -u hack/bench_scale.py [--sizes 1000,3000,10000] [--json PATH] [--write-docs]

Starts (or reuses) the local control plane, runs `kubetune operator` as a subprocess (what the image runs,
MALLOC_ARENA_MAX=2, 8 workers, watching scale-* namespaces) and grows a population of FineTuneJobs to each
size in turn, spread over --namespaces namespaces. Most of them are finished, as a real cluster holds them
until their TTL (--finished-share, default 0.9): each is created, gets its children and trainer Job from the
operator, then the benchmark writes what the trainer and the Job controller would (status.progress,
status.checkpoint, status.result; the trainer pod, which kwok runs to Succeeded; the Job's status Complete)
and the operator marks it Succeeded. (The Job controller is left out of making those pods and statuses: it
sends 20 requests a second, which would take half an hour for 10,000 Jobs.) The rest stay suspended.

At each size, once the operator and the control plane are idle:

1. the operator's RSS (process and children);
2. apply -> trainer Job for a new FineTuneJob while they all exist: --probe-jobs, one at a time
   (client create call -> the Job's ADDED event), p50/p99/max;
3. the API server's requests during --idle-seconds with nothing to do (every client's, by verb and
   resource: no periodic list storms);
4. the operator restarted: the time until it has reconciled every FineTuneJob once more (its log), the writes
   it made meanwhile (its own counter) and the objects whose resourceVersion changed (every FineTuneJob and
   child, before and after); its RSS once converged;
5. the operator restarted again: apply -> Job of new FineTuneJobs applied one a second (one after another)
   from the moment it is healthy until a minute later.

The probes of 2. and 5. are deleted after each: the population stays at its size.

Every figure is printed with the machine's load average, and the JSON keeps them all. --write-docs writes
the table of docs/benchmarks.md's "Operator at scale" section (the notes under it are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import psutil  # noqa: E402
from kubernetes import client, config  # noqa: E402

from hack.bench_operator import (  # noqa: E402
    JobWatch,
    apiserver_requests,
    load,
    new_ns,
    path_of,
    pct,
    replace_section,
    send,
    settle,
    versions,
    wait_control_plane_idle,
)
from tests.support import controlplane as cpmod  # noqa: E402
from tests.support.crds import apply_crds  # noqa: E402
from tests.support.objects import tiny_job  # noqa: E402
from tests.support.operator import RECONCILE_LOGGER, Operator  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

PREFIX = "scale"
PROBE_NS = f"{PREFIX}-probe"
OWNER_LABEL = "kubetune.io/finetunejob"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rss_mib(op: Operator) -> float:
    assert op.proc is not None
    proc = psutil.Process(op.proc.pid)
    return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)


# ---------------------------------------------------------------------------------------------------------
# The population


def get_raw(api: client.ApiClient, path: str) -> dict[str, Any] | None:
    """GET PATH as a plain dict (None: not found)."""
    try:
        result: dict[str, Any] = send(api, "GET", path, None)
        return result
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def trainer_reports(name: str) -> dict[str, Any]:
    """What the trainer of a finished run writes into its FineTuneJob's status (kubetune_trainer.reporting)."""
    at = now()
    return {
        "status": {
            "progress": {
                "step": 10,
                "totalSteps": 10,
                "epoch": 1.0,
                "percent": 100.0,
                "loss": 1.8421,
                "evalLoss": 1.9137,
                "learningRate": 0.0,
                "tokensPerSecond": 3187.5,
                "etaSeconds": 0.0,
                "updatedAt": at,
            },
            "checkpoint": {"uri": f"s3://bucket/out/{name}/checkpoints/step-10", "step": 10, "savedAt": at},
            "result": {
                "uri": f"s3://bucket/out/{name}/adapter",
                "kind": "adapter",
                "metrics": {"train_loss": 1.8421, "eval_loss": 1.9137, "train_runtime": 63.2},
                "baseModelRevision": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
                "datasetDigest": "sha256:" + "0" * 64,
                "configHash": "3f1c9a0e5b7d2c4f",
                "image": "kubetune-trainer:dev",
            },
        }
    }


def job_completed() -> dict[str, Any]:
    """The status the Job controller gives a Job whose one pod succeeded."""
    at = now()
    done = {"status": "True", "reason": "CompletionsReached", "lastProbeTime": at, "lastTransitionTime": at}
    message = {"message": "Reached expected number of succeeded pods"}
    return {
        "status": {
            "startTime": at,
            "completionTime": at,
            "succeeded": 1,
            "completedIndexes": "0",
            "conditions": [
                {"type": "SuccessCriteriaMet", **done, **message},
                {"type": "Complete", **done, **message},
            ],
        }
    }


def trainer_pod(job: dict[str, Any], node: str) -> dict[str, Any]:
    """The pod the Job controller would make for JOB (index 0), bound to NODE: kwok runs it to Succeeded."""
    meta, template = job["metadata"], job["spec"]["template"]
    uid = meta["uid"]
    labels = {
        **(template["metadata"].get("labels") or {}),
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": uid,
        "job-name": meta["name"],
        "batch.kubernetes.io/job-completion-index": "0",
    }
    annotations = {
        **(template["metadata"].get("annotations") or {}),
        "batch.kubernetes.io/job-completion-index": "0",
    }
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": uid}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-0-scale",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {**template["spec"], "nodeName": node},
    }


def finish(api: client.ApiClient, namespace: str, name: str, node: str, pods: bool) -> None:
    """Make the FineTuneJob NAMESPACE/NAME's run finished, as its trainer and the Job controller would."""
    job_path = path_of("Job", namespace, f"{name}-trainer")
    job = wait_for(functools.partial(get_raw, api, job_path), 600, 0.5, f"{namespace}/{name}'s Job")
    send(api, "PATCH", path_of("FineTuneJob", namespace, name, "status"), trainer_reports(name), MERGE)
    if pods:
        try:
            send(api, "POST", path_of("Pod", namespace), trainer_pod(job, node))
        except client.ApiException as exc:
            if exc.status != 409:  # 409: made by an earlier, interrupted run
                raise
    send(api, "PATCH", path_of("Job", namespace, job["metadata"]["name"], "status"), job_completed(), MERGE)


MERGE = "application/merge-patch+json"


def existing(api: client.ApiClient, namespaces: list[str]) -> dict[str, dict[str, Any]]:
    """Every FineTuneJob of NAMESPACES by "ns/name" (paged plain lists)."""
    out: dict[str, dict[str, Any]] = {}
    for ns in namespaces:
        token = None
        while True:
            query = "?limit=500" + (f"&continue={token}" if token else "")
            page = send(api, "GET", path_of("FineTuneJob", ns) + query, None)
            for o in page["items"]:
                out[f"{ns}/{o['metadata']['name']}"] = o
            token = page["metadata"].get("continue")
            if not token:
                break
    return out


def populate(
    api: client.ApiClient, namespaces: list[str], size: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Grow the population to SIZE FineTuneJobs (the first --finished-share of each batch finished) and wait
    until every one is Succeeded or Suspended."""
    have = existing(api, namespaces)
    todo = [(namespaces[i % len(namespaces)], f"ftj-{i:05d}") for i in range(size)]
    todo = [(ns, name) for ns, name in todo if f"{ns}/{name}" not in have]
    finished = {name for i, (_, name) in enumerate(todo) if (i % 100) < args.finished_share * 100}
    t0 = time.perf_counter()

    def create(item: tuple[str, str]) -> None:
        ns, name = item
        try:
            send(api, "POST", path_of("FineTuneJob", ns), tiny_job(name, suspend=True))
        except client.ApiException as exc:
            if exc.status != 409:  # 409: made by an earlier, interrupted run
                raise

    nodes = [
        n.metadata.name for n in client.CoreV1Api(api).list_node().items if n.metadata.name.startswith("kwok")
    ]

    def complete(item: tuple[str, str]) -> None:
        ns, name = item
        finish(api, ns, name, nodes[sum(map(ord, name)) % len(nodes)], args.pods)

    batch = 500
    with ThreadPoolExecutor(args.client_threads) as pool:
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            list(pool.map(create, part))
            list(pool.map(complete, [item for item in part if item[1] in finished]))
            print(f"  populated {len(have) + start + len(part)}/{size} (load {load()})", flush=True)

    def converged() -> bool:
        phases = [(o.get("status") or {}).get("phase") for o in existing(api, namespaces).values()]
        return len(phases) >= size and all(p in ("Succeeded", "Suspended") for p in phases)

    wait_for(converged, 3600, 10.0, f"{size} FineTuneJobs Succeeded or Suspended")
    return {"created": len(todo), "finished": len(finished), "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------------------
# The measurements


class Probe:
    """apply -> trainer Job of new FineTuneJobs in PROBE_NS (client create call -> the Job's ADDED event)."""

    def __init__(self, api: client.ApiClient, jw: JobWatch):
        self.api = api
        self.jw = jw
        self.n = 0

    def one(self, timeout: float = 300.0) -> float:
        self.n += 1
        name = f"probe-{time.strftime('%H%M%S')}-{self.n}"
        t0 = time.perf_counter()
        send(self.api, "POST", path_of("FineTuneJob", PROBE_NS), tiny_job(name, suspend=True))
        seen = wait_for(functools.partial(self.jw.first_seen, PROBE_NS, f"{name}-trainer"), timeout, 0.002)
        return float(seen - t0)

    def series(
        self, count: int | None = None, seconds: float | None = None, every: float = 0.0
    ) -> list[float]:
        """COUNT probes one after another, or as many as fit in SECONDS; each starts EVERY seconds after the
        last one started (or when it is done, if that took longer)."""
        out: list[float] = []
        start = time.perf_counter()
        while (count is not None and len(out) < count) or (
            seconds is not None and time.perf_counter() - start < seconds
        ):
            began = time.perf_counter()
            out.append(self.one())
            time.sleep(max(0.0, every - (time.perf_counter() - began)))
        return out

    def clear(self) -> None:
        """Delete the probes (and, through garbage collection, their children): the population stays as it was."""
        send(self.api, "DELETE", path_of("FineTuneJob", PROBE_NS), None, query=[])
        wait_for(lambda: not existing(self.api, [PROBE_NS]), 600, 1.0, "the probe FineTuneJobs deleted")


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "n": len(ms),
        "p50": round(pct(ms, 0.5), 1),
        "p99": round(pct(ms, 0.99), 1),
        "max": round(max(ms), 1) if ms else None,
        "first": round(ms[0], 1) if ms else None,
    }


def reconciled_keys(op: Operator) -> set[str]:
    """The FineTuneJobs ("ns/name") this operator process has reconciled at least once (its log)."""
    line = re.compile(rf" {re.escape(RECONCILE_LOGGER)}: FineTuneJob (\S+) reconciled")
    return set(line.findall(op.log_path.read_text(errors="replace")))


def idle_requests(api: client.ApiClient, seconds: float) -> dict[str, Any]:
    """Every client's requests to the API server during SECONDS with nothing to do."""
    before, load_before = apiserver_requests(api), load()
    time.sleep(seconds)
    after = apiserver_requests(api)
    rows = {k: after[k] - before[k] for k in after if not k.startswith("WATCH") and after[k] > before[k]}
    # The benchmark's own two reads of /metrics are in it; they are left out.
    return {
        "seconds": seconds,
        "requests": sum(rows.values()),
        "by_request": dict(sorted(rows.items(), key=lambda kv: -kv[1])),
        "lists": sum(v for k, v in rows.items() if k.startswith("LIST")),
        "load": [load_before, load()],
    }


def measure(
    api: client.ApiClient,
    op: Operator,
    probe: Probe,
    namespaces: list[str],
    size: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {"objects": size, "load_at_start": load()}
    settle(op, 5.0, 1800)
    out["waited_for_idle_s"] = wait_control_plane_idle(op, timeout=600)
    out["rss_mib"] = rss_mib(op)
    print(f"[{size}] RSS {out['rss_mib']} MiB (load {load()})", flush=True)

    out["apply_to_job_ms"] = summary(probe.series(count=args.probe_jobs))
    probe.clear()
    print(f"[{size}] apply -> Job while they exist: {out['apply_to_job_ms']} (load {load()})", flush=True)

    settle(op, 3.0, 600)
    wait_control_plane_idle(op, timeout=600)
    out["idle"] = idle_requests(api, args.idle_seconds)
    print(f"[{size}] idle {args.idle_seconds:g} s: {out['idle']}", flush=True)

    # A restart with nothing else to do: until every FineTuneJob was reconciled once more, and what it wrote.
    watched = [*namespaces, PROBE_NS]
    before = versions(api, watched)
    keys = set(existing(api, watched))
    op.stop()
    restarted = time.perf_counter()
    op.start()

    def all_seen() -> float | None:
        return time.perf_counter() - restarted if keys <= reconciled_keys(op) else None

    converged = wait_for(all_seen, 3600, 0.5, "every FineTuneJob reconciled after the restart")
    settle(op, 5.0, 1800)
    after = versions(api, watched)
    changed = sorted(k for k in before if after.get(k) != before[k])
    out["restart"] = {
        "objects": len(keys),
        "all_reconciled_s": round(converged, 1),
        "writes_counted_by_operator": op.metric("kubetune_api_writes_total"),
        "objects_with_new_resourceVersion": len(changed),
        "examples": changed[:5],
        "load": load(),
    }
    out["rss_after_restart_mib"] = rss_mib(op)
    print(f"[{size}] restart: {out['restart']}; RSS {out['rss_after_restart_mib']} MiB", flush=True)

    # Another restart, and new FineTuneJobs applied one after another from the moment it is healthy.
    settle(op, 3.0, 600)
    wait_control_plane_idle(op, timeout=600)
    op.stop()
    restarted = time.perf_counter()
    op.start()
    out["restart_healthy_s"] = round(time.perf_counter() - restarted, 1)
    out["apply_to_job_after_restart_ms"] = summary(probe.series(seconds=60.0, every=1.0))
    print(
        f"[{size}] apply -> Job in the minute after a restart: {out['apply_to_job_after_restart_ms']}",
        flush=True,
    )
    wait_for(all_seen, 3600, 0.5, "every FineTuneJob reconciled after the second restart")
    probe.clear()
    return out


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,3000,10000", help="populations to measure, ascending")
    ap.add_argument("--namespaces", type=int, default=10, help="namespaces the population is spread over")
    ap.add_argument("--finished-share", type=float, default=0.9, help="share of finished (Succeeded) jobs")
    ap.add_argument("--no-pods", dest="pods", action="store_false", help="finished jobs without their pods")
    ap.add_argument("--probe-jobs", type=int, default=50, help="apply -> Job probes at each size")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=8, help="operator reconcile workers (KUBETUNE_WORKERS)")
    ap.add_argument("--client-threads", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the population (the next run grows it)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    cp = cpmod.ControlPlane()
    cp.up()
    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    api.configuration.connection_pool_maxsize = max(32, args.client_threads * 2)
    core = client.CoreV1Api(api)
    apply_crds(api)
    out_dir = REPO / ".cluster" / "bench-scale"
    out_dir.mkdir(parents=True, exist_ok=True)
    namespaces = [f"{PREFIX}-{i}" for i in range(args.namespaces)]

    def terminating() -> list[str]:
        return [n.metadata.name for n in core.list_namespace().items if n.status.phase == "Terminating"]

    wait_for(
        lambda: not set(terminating()) & {*namespaces, PROBE_NS}, 900, 2.0, "the last run's namespaces gone"
    )
    live = {n.metadata.name for n in core.list_namespace().items}
    for ns in [*namespaces, PROBE_NS]:
        if ns not in live:
            new_ns(core, ns)
    op = Operator(
        str(cp.kubeconfig),
        out_dir,
        namespaces=f"{PREFIX}-*",
        KUBETUNE_WORKERS=str(args.workers),
        KUBETUNE_LOG_LEVEL="WARNING",
        MALLOC_ARENA_MAX="2",  # the operator image's setting (operator/Dockerfile): measure what users run
    )
    op.start()
    jw = JobWatch(api, namespace=PROBE_NS)
    probe = Probe(api, jw)
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "sizes": [],
        "args": vars(args),
    }
    try:
        for size in sizes:
            print(f"[{size}] populating (load {load()})", flush=True)
            population = populate(api, namespaces, size, args)
            print(f"[{size}] populated: {population}", flush=True)
            figures = measure(api, op, probe, namespaces, size, args)
            figures["population"] = population
            results["sizes"].append(figures)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        jw.stop.set()
        op.stop()
        if not args.keep:
            for ns in [*namespaces, PROBE_NS]:
                with contextlib.suppress(Exception):
                    core.delete_namespace(ns)
    (out_dir / f"results-{time.strftime('%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(results)
    return 0


SECTION = "## Operator at scale"


def write_docs(r: dict[str, Any]) -> None:
    path = REPO / "docs" / "benchmarks.md"
    a = r["args"]
    head = "| | " + " | ".join(f"{s['objects']:,} FineTuneJobs" for s in r["sizes"]) + " | target |\n"
    head += "|---|" + "---|" * len(r["sizes"]) + "---|\n"

    def row(what: str, cell, target: str) -> str:
        return f"| {what} | " + " | ".join(cell(s) for s in r["sizes"]) + f" | {target} |\n"

    def lat(s: dict[str, Any]) -> str:
        return f"p50 {s['p50']} / p99 {s['p99']} ms (max {s['max']}, n {s['n']})"

    rows = "".join(
        [
            row("operator RSS, steady", lambda s: f"{s['rss_mib']} MiB", "<= 400 MiB"),
            row("operator RSS after a restart", lambda s: f"{s['rss_after_restart_mib']} MiB", "<= 400 MiB"),
            row(
                "restart until every FineTuneJob was reconciled; writes; objects changed",
                lambda s: (
                    f"{s['restart']['all_reconciled_s']} s; {s['restart']['writes_counted_by_operator']:.0f}; "
                    f"{s['restart']['objects_with_new_resourceVersion']}"
                ),
                "<= 60 s, 0 writes",
            ),
            row("apply -> Job while they exist", lambda s: lat(s["apply_to_job_ms"]), "p99 <= 150 ms"),
            row(
                "apply -> Job in the minute after a restart",
                lambda s: (
                    lat(s["apply_to_job_after_restart_ms"])
                    + f"; first {s['apply_to_job_after_restart_ms']['first']} ms"
                ),
                "p99 <= 150 ms",
            ),
            row(
                f"API requests in an idle {a['idle_seconds']:g} s (all clients; LISTs)",
                lambda s: f"{s['idle']['requests']}; {s['idle']['lists']} LISTs",
                "no list storms",
            ),
            row("load average (1 min) at the start", lambda s: f"{s['load_at_start']}", ""),
        ]
    )
    command = (
        f".venv/bin/python -u hack/bench_scale.py --sizes {a['sizes']} --namespaces {a['namespaces']} "
        f"--finished-share {a['finished_share']} --probe-jobs {a['probe_jobs']} --write-docs"
    )
    text = f"""{SECTION} ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})

Command: `{command}` (not part of `make test` or `make bench`). The local control plane and the operator
(`kubetune operator`, {r["workers"]} workers, `MALLOC_ARENA_MAX=2`) on one {r["cpus"]}-core machine. The
population grows to each size in turn over {a["namespaces"]} namespaces; {a["finished_share"]:.0%} of it
finished (Succeeded, with the trainer's status, a completed Job{" and its Succeeded pod" if a["pods"] else ""}), the rest suspended.

{head}{rows}"""
    old = path.read_text()
    path.write_text(replace_section(old, SECTION, text))
    print(f"wrote the scale section of {path}")


if __name__ == "__main__":
    sys.exit(main())
