#!/usr/bin/env python3
"""Latency and memory of `kubetune api` (the OpenAI-compatible gateway) on the local control plane.

    .venv/bin/python hack/bench_gateway.py [--requests 200] [--rounds 3] [--json .cluster/bench/gateway.json]

Starts (or reuses) the local control plane, applies the CRDs and runs two gateways as subprocesses, each as a
ServiceAccount with the chart's own ClusterRole: one with the default auth cache (a successful TokenReview
and an allowing SubjectAccessReview reused for 10 s) and one without (api.authCacheSeconds 0: two reviews
per request). A caller (a ServiceAccount with a Role on finetunejobs and modelserves) then sends, one at a
time over a kept-alive connection, in alternating rounds:

- create: POST /v1/fine_tuning/jobs through each gateway, and the floor: the same FineTuneJob created
  directly on the API server with the caller's token (the `kubernetes` client);
- retrieve: GET /v1/fine_tuning/jobs/{id} through each gateway (a get, plus the list of ModelServes for
  fine_tuned_model), and the floor: a direct get.

Reported: p50 and p99 of each (best round), the gateways' overhead over the floor, and each gateway's RSS
at start, after the runs, its peak (VmHWM), and around a 20 MB upload (streamed to the volume, not held).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import httpx2  # noqa: E402
import psutil  # noqa: E402
from kubernetes import client, config  # noqa: E402

from kubetune.gateway import create as mapping  # noqa: E402
from tests.gateway.helpers import (  # noqa: E402
    FULL_ACCESS,
    Gateway,
    chart_docs,
    chat_lines,
    grant,
    new_service_account,
    service_account_token,
    token_kubeconfig,
)
from tests.support import controlplane as cpmod  # noqa: E402
from tests.support.crds import apply_crds, wait_served  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(pct(ms, 0.5), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "mean_ms": round(statistics.mean(ms), 2),
    }


def new_namespace(api: client.ApiClient, prefix: str) -> str:
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.io/test": "true"}}})
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def rss(pid: int) -> dict[str, float]:
    mem = psutil.Process(pid).memory_info()
    hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return {"rss_mib": round(mem.rss / 2**20, 1), "peak_mib": round(hwm, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="creates and retrieves per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cp = cpmod.ControlPlane()
    started = cp.up()
    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    apply_crds(api)
    rbac = client.RbacAuthorizationV1Api(api)
    system = new_namespace(api, "gwbench-system")
    release = f"gwb{uuid.uuid4().hex[:6]}"
    docs = {d["kind"]: d for d in chart_docs(release, system, "api-rbac.yaml")}
    client.CoreV1Api(api).create_namespaced_service_account(system, docs["ServiceAccount"])
    rbac.create_cluster_role(docs["ClusterRole"])
    rbac.create_cluster_role_binding(docs["ClusterRoleBinding"])
    work = Path(tempfile.mkdtemp(prefix="gwbench-"))
    gw_token = service_account_token(api, system, docs["ServiceAccount"]["metadata"]["name"])
    ca = Path(api.configuration.ssl_ca_cert).read_bytes() if api.configuration.ssl_ca_cert else None
    kubeconfig = token_kubeconfig(api.configuration.host, ca, gw_token, work / "gateway-kubeconfig")
    (work / "files").mkdir()
    gateways = {
        "cached": Gateway(kubeconfig, work / "cached", work / "files", KUBETUNE_API_MAX_FILE_BYTES=str(64 * 2**20)),
        "uncached": Gateway(kubeconfig, work / "uncached", work / "files", KUBETUNE_API_AUTH_CACHE_SECONDS="0",
                            KUBETUNE_API_MAX_FILE_BYTES=str(64 * 2**20)),
    }  # fmt: skip
    ns = new_namespace(api, "gwbench")
    results: dict[str, Any] = {"requests": args.requests, "rounds": args.rounds, "cpus": os.cpu_count(),
                               "load_at_start": os.getloadavg()}  # fmt: skip
    try:
        wait_served(api, ns)
        new_service_account(api, ns, "alice")
        grant(api, ns, (ns, "alice"), FULL_ACCESS)
        grant(api, ns, (ns, "alice"), ["list"], "modelserves")
        token = service_account_token(api, ns, "alice")
        for gw in gateways.values():
            gw.start()
        results["rss_at_start"] = {name: rss(gw.proc.pid) for name, gw in gateways.items()}  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {token}", "OpenAI-Project": ns}
        http = {
            name: httpx2.Client(base_url=f"{gw.url}/v1", headers=headers, timeout=60)
            for name, gw in gateways.items()
        }
        upload = http["cached"].post(
            "/files", files={"file": ("d.jsonl", chat_lines(8))}, data={"purpose": "fine-tune"}
        )
        upload.raise_for_status()
        file_id = upload.json()["id"]
        direct = client.CustomObjectsApi(client.ApiClient(_token_config(api, token)))
        body = {"model": "hf://org/tiny", "training_file": file_id}
        # The floor: the FineTuneJob the gateway makes, created directly (new name each time).
        template = http["cached"].post("/fine_tuning/jobs", json=body).json()
        manifest = direct.get_namespaced_custom_object(
            "kubetune.io", "v1alpha1", ns, "finetunejobs", template["id"]
        )
        manifest = {k: manifest[k] for k in ("apiVersion", "kind", "spec")} | {
            "metadata": {"annotations": manifest["metadata"]["annotations"]}
        }

        def gateway_create(name: str) -> str:
            response = http[name].post("/fine_tuning/jobs", json=body)
            response.raise_for_status()
            return str(response.json()["id"])

        def direct_create() -> str:
            obj = dict(manifest, metadata={**manifest["metadata"], "name": mapping.job_name(ns, "x", None)})
            return str(
                direct.create_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs", obj)[
                    "metadata"
                ]["name"]
            )

        samples: dict[str, list[list[float]]] = {}
        made: list[str] = []
        for _ in range(args.rounds):
            for side, call in (("create direct", direct_create), ("create gateway cached", lambda: gateway_create("cached")),
                               ("create gateway uncached", lambda: gateway_create("uncached"))):  # fmt: skip
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    made.append(call())
                    times.append(time.perf_counter() - t0)
                samples.setdefault(side, []).append(times)
            for side, fetch in (
                ("retrieve direct", lambda i: direct.get_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs", i)),
                ("retrieve gateway cached", lambda i: http["cached"].get(f"/fine_tuning/jobs/{i}").raise_for_status()),
                ("retrieve gateway uncached", lambda i: http["uncached"].get(f"/fine_tuning/jobs/{i}").raise_for_status()),
            ):  # fmt: skip
                times = []
                for i in range(args.requests):
                    t0 = time.perf_counter()
                    fetch(made[i % len(made)])
                    times.append(time.perf_counter() - t0)
                samples.setdefault(side, []).append(times)
        best = {
            side: min((summary(r) for r in rounds), key=lambda s: s["p50_ms"])
            for side, rounds in samples.items()
        }
        results["latency"] = best
        results["rounds_p50_ms"] = {
            side: [summary(r)["p50_ms"] for r in rounds] for side, rounds in samples.items()
        }
        for op in ("create", "retrieve"):
            floor = best[f"{op} direct"]["p50_ms"]
            for kind in ("cached", "uncached"):
                results.setdefault("overhead_p50", {})[f"{op} {kind}"] = round(
                    best[f"{op} gateway {kind}"]["p50_ms"] / floor, 2
                )
        results["rss_after_runs"] = {name: rss(gw.proc.pid) for name, gw in gateways.items()}  # type: ignore[union-attr]
        big = chat_lines(120_000)  # ~20 MB of chat examples
        before = rss(gateways["cached"].proc.pid)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        response = http["cached"].post(
            "/files", files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}
        )
        response.raise_for_status()
        results["upload_20mb"] = {"bytes": len(big), "seconds": round(time.perf_counter() - t0, 2), "rss_before": before,
                                   "rss_after": rss(gateways["cached"].proc.pid)}  # type: ignore[union-attr]  # fmt: skip
        results["load_at_end"] = os.getloadavg()
    finally:
        for gw in gateways.values():
            gw.stop()
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(docs["ClusterRole"]["metadata"]["name"])
        for name in (ns, system):
            client.CoreV1Api(api).delete_namespace(name)
        if started:
            cp.down()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _token_config(admin: client.ApiClient, token: str) -> client.Configuration:
    """The admin's connection settings (server, CA) with the caller's bearer token instead of its certificate."""
    conf = client.Configuration()
    conf.host = admin.configuration.host
    conf.ssl_ca_cert = admin.configuration.ssl_ca_cert
    conf.verify_ssl = admin.configuration.verify_ssl
    conf.api_key = {"BearerToken": token}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
    return conf


if __name__ == "__main__":
    sys.exit(main())
