#!/usr/bin/env python3
"""Soak test of the FineTuneJob controller on the local control plane (not part of `make test`).

    .venv/bin/python hack/soak_operator.py [--waves 5] [--jobs 500] [--workers 8] [--threads 16]

Starts (or reuses) the local control plane, runs `kubetune operator` as a subprocess (watching soak-*
namespaces) and, WAVES times: creates JOBS FineTuneJobs (spec.suspend=true, so the operator does all its
work - children, status, events - and no pods start), waits until each has its trainer Job, deletes them
all, waits until every FineTuneJob and every child (Job, ConfigMap, Service, ServiceAccount, Role,
RoleBinding) is gone, lets the operator settle and records its RSS (process and children). Passes when
the RSS after the last wave is within --rss-tolerance-mib (10) of the first wave's and nothing is left
behind. Prints one table row per wave (with the machine's load average: the timings depend on it); the
figures go to docs/reliability.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import psutil  # noqa: E402
from kubernetes import client, config  # noqa: E402

from hack.bench_operator import new_ns, settle  # noqa: E402
from tests.support import controlplane as cpmod  # noqa: E402
from tests.support.crds import apply_crds  # noqa: E402
from tests.support.objects import tiny_job  # noqa: E402
from tests.support.operator import Operator  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

SELECTOR = "kubetune.io/finetunejob"


def rss_mib(op: Operator) -> float:
    if op.proc is None:
        raise RuntimeError("the operator is not running: start it before measuring its memory")
    proc = psutil.Process(op.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def leftovers(api: client.ApiClient, ns: str) -> dict[str, int]:
    """What is left in NS of the FineTuneJobs and their children."""
    co, core, batch, rbac = (
        client.CustomObjectsApi(api),
        client.CoreV1Api(api),
        client.BatchV1Api(api),
        client.RbacAuthorizationV1Api(api),
    )
    counts = {
        "finetunejobs": len(
            co.list_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs")["items"]
        ),
        "jobs": len(batch.list_namespaced_job(ns, label_selector=SELECTOR).items),
        "configmaps": len(core.list_namespaced_config_map(ns, label_selector=SELECTOR).items),
        "services": len(core.list_namespaced_service(ns, label_selector=SELECTOR).items),
        "serviceaccounts": len(core.list_namespaced_service_account(ns, label_selector=SELECTOR).items),
        "roles": len(rbac.list_namespaced_role(ns, label_selector=SELECTOR).items),
        "rolebindings": len(rbac.list_namespaced_role_binding(ns, label_selector=SELECTOR).items),
        "pods": len(core.list_namespaced_pod(ns, label_selector=SELECTOR).items),
    }
    return {k: v for k, v in counts.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waves", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=500, help="FineTuneJobs per wave")
    ap.add_argument("--workers", type=int, default=8, help="operator reconcile workers (KUBETUNE_WORKERS)")
    ap.add_argument("--threads", type=int, default=16, help="client threads creating and deleting")
    ap.add_argument("--rss-tolerance-mib", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per wave phase")
    args = ap.parse_args()

    cp = cpmod.ControlPlane()
    cp.up()
    kubeconfig = str(cp.kubeconfig)
    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = max(32, args.threads * 2)
    core = client.CoreV1Api(api)
    co = client.CustomObjectsApi(api)
    batch = client.BatchV1Api(api)
    apply_crds(api)
    tag = time.strftime("%H%M%S")
    out_dir = REPO / ".cluster" / "soak"
    out_dir.mkdir(parents=True, exist_ok=True)
    op = Operator(
        kubeconfig,
        out_dir,
        namespaces="soak-*",
        KUBETUNE_WORKERS=str(args.workers),
        KUBETUNE_LOG_LEVEL="WARNING",
        # The operator image's setting (operator/Dockerfile): measure what users run.
        MALLOC_ARENA_MAX="2",
    )
    # Made before the operator starts: kopf 1.45 misses a namespace created between its namespace
    # observer's listing and its watch's own.
    ns = new_ns(core, f"soak-{tag}")
    op.start()
    rows: list[dict] = []
    print(
        f"{'wave':>4} {'jobs':>5} {'create s':>9} {'all Jobs s':>10} {'delete+gc s':>11} "
        f"{'RSS MiB':>8} {'reconcile errors':>16} {'left behind':>12} {'load 1m':>8}",
        flush=True,
    )
    try:
        for wave in range(1, args.waves + 1):
            names = [f"w{wave}-{i}" for i in range(args.jobs)]
            errors_before = op.metric("controller_runtime_reconcile_errors_total")

            def create(name: str) -> None:
                co.create_namespaced_custom_object(
                    "kubetune.io", "v1alpha1", ns, "finetunejobs", tiny_job(name, suspend=True)
                )

            def delete(name: str) -> None:
                co.delete_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs", name)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(create, names))
            t_create = time.perf_counter() - t0
            wait_for(
                lambda: len(batch.list_namespaced_job(ns, label_selector=SELECTOR).items) >= args.jobs,
                args.timeout,
                0.5,
                f"wave {wave}: every trainer Job",
            )
            t_jobs = time.perf_counter() - t0
            settle(op, 2.0, args.timeout)
            t1 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(delete, names))
            wait_for(lambda: not leftovers(api, ns), args.timeout, 0.5, f"wave {wave}: everything deleted")
            t_delete = time.perf_counter() - t1
            settle(op, 3.0, args.timeout)
            row = {
                "wave": wave,
                "jobs": args.jobs,
                "create_s": round(t_create, 1),
                "all_jobs_s": round(t_jobs, 1),
                "delete_gc_s": round(t_delete, 1),
                "rss_mib": round(rss_mib(op), 1),
                "reconcile_errors": op.metric("controller_runtime_reconcile_errors_total") - errors_before,
                "left_behind": sum(leftovers(api, ns).values()),
                # The machine's load (1-minute average) when the wave ended: the timings depend on it.
                "load_1m": round(os.getloadavg()[0], 1),
            }
            rows.append(row)
            print(
                f"{wave:>4} {args.jobs:>5} {row['create_s']:>9} {row['all_jobs_s']:>10} {row['delete_gc_s']:>11} "
                f"{row['rss_mib']:>8} {row['reconcile_errors']:>16g} {row['left_behind']:>12} {row['load_1m']:>8}",
                flush=True,
            )
    finally:
        op.stop()
        with contextlib.suppress(Exception):
            core.delete_namespace(ns)
    growth = rows[-1]["rss_mib"] - rows[0]["rss_mib"]
    ok = abs(growth) <= args.rss_tolerance_mib and not any(r["left_behind"] for r in rows)
    summary = {"rows": rows, "rss_growth_mib": round(growth, 1), "ok": ok}
    (out_dir / f"soak-{tag}.json").write_text(json.dumps(summary, indent=2))
    print(
        f"RSS wave {rows[-1]['wave']} - wave 1: {growth:+.1f} MiB (limit {args.rss_tolerance_mib}); "
        f"left behind: {sum(r['left_behind'] for r in rows)}; {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
