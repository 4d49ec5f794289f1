"""`kubetune status` and `kubetune logs`: follow a FineTuneJob (or ModelServe) without kubectl and jq.

The views (``render_status``, ``select_pods``, ``finished``) are pure functions of the objects the API
server returns; the thin shells around them talk to it with the official kubernetes client (the ``cli``
extra), using the current kubeconfig context (or the in-cluster ServiceAccount).
"""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from kubetune.api.v1alpha1 import GROUP, VERSION

PLURALS = {"FineTuneJob": "finetunejobs", "ModelServe": "modelserves"}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
FTJ_DONE = {"Succeeded": 0, "Failed": 1}
MS_DONE = {"Ready": 0, "Degraded": 1, "Failed": 1}


class CLIError(Exception):
    """A problem the user can fix; printed as is."""


# ---------------------------------------------------------------------------------------------- views


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def progress_bar(step: int, total: int, width: int = 30) -> str:
    """[#########.....................]  40/100 steps  40.0%"""
    fraction = min(max(step / total, 0.0), 1.0) if total > 0 else 0.0
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total or '?'} steps {100 * fraction:5.1f}%"


def _conditions(status: dict[str, Any]) -> list[str]:
    conditions = status.get("conditions") or []
    if not conditions:
        return []
    lines = ["Conditions:"]
    for c in conditions:
        message = c.get("message") or ""
        lines.append(
            f"  {c.get('type', '?'):<13}{c.get('status', '?'):<8}{c.get('reason') or '':<24}{message}".rstrip()
        )
    return lines


def _header(obj: dict[str, Any]) -> str:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    line = f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}: {status.get('phase') or 'Pending'}"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed != generation:
        line += f" (the operator has not seen generation {generation} yet; status is of {observed or 'none'})"
    if meta.get("deletionTimestamp"):
        line += " (being deleted)"
    return line


def _estimate_lines(estimate: dict[str, Any]) -> list[str]:
    """status.estimate: the fit check's figures."""
    if estimate.get("perGpuGiB") is None:
        return [f"  fit: {estimate['message']}"] if estimate.get("message") else []
    available = estimate.get("availableGiB")
    verdict = {True: "fits", False: "does not fit", None: "GPU memory unknown"}[estimate.get("fits")]
    have = f" of {available:g} GiB" if available is not None else ""
    return [f"  fit: ~{estimate['perGpuGiB']:g} GiB per GPU{have}: {verdict}"]


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    """status.evaluation: each metric (result and base) and the gates' verdicts."""
    if not evaluation:
        return []
    passed = evaluation.get("passed")
    lines = [f"  evaluation: {'passed' if passed else 'FAILED' if passed is False else 'in progress'}"]
    for metric in evaluation.get("metrics") or []:
        base = f" (base {metric['base']:.4g})" if metric.get("base") is not None else ""
        value = f"{metric['result']:.4g}" if metric.get("result") is not None else "-"
        lines.append(f"    {metric.get('name')}: {value}{base}")
    for gate in evaluation.get("gates") or []:
        lines.append(f"    gate {'passed' if gate.get('passed') else 'FAILED'}: {gate.get('message')}")
    return lines


def render_status(obj: dict[str, Any], now: datetime | None = None) -> str:
    """The status of a FineTuneJob or ModelServe as a few lines for people."""
    now = now or datetime.now(UTC)
    status = obj.get("status") or {}
    lines = [_header(obj)]
    if obj.get("kind") == "FineTuneJob":
        progress = status.get("progress") or {}
        if progress.get("totalSteps"):
            lines.append("  " + progress_bar(int(progress.get("step") or 0), int(progress["totalSteps"])))
            figures = [f"epoch {float(progress.get('epoch') or 0):.2f}"]
            if progress.get("loss") is not None:
                figures.append(f"loss {progress['loss']:.4f}")
            if progress.get("evalLoss") is not None:
                figures.append(f"eval loss {progress['evalLoss']:.4f}")
            if progress.get("tokensPerSecond") is not None:
                figures.append(f"{progress['tokensPerSecond']:,.0f} tokens/s")
            if status.get("phase") == "Running":
                figures.append(f"ETA {_fmt_duration(progress.get('etaSeconds'))}")
            updated = _parse_time(progress.get("updatedAt"))
            if updated is not None:
                figures.append(f"updated {_fmt_duration((now - updated).total_seconds())} ago")
            lines.append("  " + " | ".join(figures))
        facts = []
        if status.get("jobName"):
            facts.append(f"trainer Job {status['jobName']}")
        if status.get("attempts"):
            facts.append(
                f"attempt {status['attempts']} of {1 + int((obj.get('spec') or {}).get('backoffLimit', 3))}"
            )
        if (status.get("checkpoint") or {}).get("step") is not None:
            facts.append(f"checkpoint at step {status['checkpoint']['step']}")
        if facts:
            lines.append("  " + ", ".join(facts))
        result = status.get("result") or {}
        if result.get("uri"):
            promoted = (
                " (not promoted: it failed its evaluation gate)" if result.get("promoted") is False else ""
            )
            lines.append(f"  result: {result.get('kind') or 'model'} at {result['uri']}{promoted}")
            if result.get("mergedUri"):
                lines.append(f"  merged model: {result['mergedUri']}")
        lines += _estimate_lines(status.get("estimate") or {})
        lines += _evaluation_lines(status.get("evaluation") or {})
    else:
        lines.append(
            f"  {status.get('readyReplicas', 0)}/{status.get('replicas', 0)} replicas ready"
            + (f", endpoint {status['endpoint']}" if status.get("endpoint") else "")
        )
        revision = status.get("revision") or {}
        if revision.get("hash"):
            lines.append(f"  revision {revision['hash']}: {revision.get('model') or '?'}")
        rollout = status.get("lastRollout") or {}
        if rollout.get("result") or rollout.get("startedAt"):
            lines.append(f"  last rollout: {rollout.get('result') or 'in progress'}"
                         + (f" ({rollout['message']})" if rollout.get("message") else ""))  # fmt: skip
    lines += _conditions(status)
    return "\n".join(lines)


def _condition_true(status: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def finished(obj: dict[str, Any]) -> int | None:
    """None while the object is still on its way; else the exit code of `status -w` (0 done, 1 failed/stuck)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("generation") is not None and status.get("observedGeneration") != meta.get("generation"):
        return None
    if _condition_true(status, "Stalled"):
        return 1
    done = FTJ_DONE if obj.get("kind") == "FineTuneJob" else MS_DONE
    return done.get(status.get("phase") or "")


def select_pods(pods: list[dict[str, Any]], job_name: str, rank: int | None = None) -> list[dict[str, Any]]:
    """The pods of the trainer Job JOB_NAME (the current attempt), by rank; only RANK's when given.

    A rank may have several pods (a restarted pod); the newest comes first."""

    def rank_of(pod: dict[str, Any]) -> int:
        meta = pod.get("metadata") or {}
        value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(
            COMPLETION_INDEX
        )
        return int(value) if value is not None and str(value).isdigit() else 0

    mine = [
        p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL) == job_name
    ]
    if rank is not None:
        mine = [p for p in mine if rank_of(p) == rank]
    newest_first = sorted(mine, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""), reverse=True)
    return sorted(newest_first, key=rank_of)


# ---------------------------------------------------------------------------------------------- client


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A client with the operator's credential loading (kubectl's rules: exec plugins, tokens, in-cluster)."""
    from kubernetes import config

    from kubetune.reconcile import client as kube_client
    from kubetune.reconcile.credentials import load_configuration

    try:
        return kube_client.api_client(load_configuration(kubeconfig, context))
    except (config.ConfigException, OSError) as exc:
        raise CLIError(
            f"no usable kubeconfig (set KUBECONFIG or --kubeconfig) and not in a cluster: {exc}"
        ) from exc


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except config.ConfigException:
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


def fetch(api, namespace: str, name: str, kind: str | None = None) -> dict[str, Any]:
    """The FineTuneJob NAME (or, failing that, the ModelServe NAME) in NAMESPACE."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    for k in [kind] if kind else list(PLURALS):
        try:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[k], name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise CLIError(f"cannot read {k} {namespace}/{name}: {exc.status} {exc.reason}") from exc
    kinds = kind or "FineTuneJob or ModelServe"
    raise CLIError(
        f"no {kinds} named {name} in namespace {namespace} (kubectl get ftj,mserve -n {namespace})"
    )


def watch_status(api, namespace: str, obj: dict[str, Any], out: TextIO, timeout: float | None = None) -> int:
    """Print the status on every change until the object finishes; its exit code (see ``finished``)."""
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(api)
    kind, name = obj["kind"], obj["metadata"]["name"]
    started = datetime.now(UTC)
    while True:
        code = finished(obj)
        if code is not None:
            return code
        remaining = None if timeout is None else timeout - (datetime.now(UTC) - started).total_seconds()
        if remaining is not None and remaining <= 0:
            return 2
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURALS[kind],
            field_selector=f"metadata.name={name}", resource_version=obj["metadata"]["resourceVersion"],
            timeout_seconds=int(min(remaining or 60, 60)) or 1,
        )  # fmt: skip
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise CLIError(f"{kind} {namespace}/{name} was deleted")
                if event["type"] not in ("ADDED", "MODIFIED"):
                    continue
                new = event["object"]
                if new.get("status") != obj.get("status") or new["metadata"].get("generation") != obj[
                    "metadata"
                ].get("generation"):
                    print("\n" + render_status(new), file=out, flush=True)
                obj = new
                if finished(obj) is not None:
                    break
        except client.ApiException as exc:
            if exc.status != 410:  # the resourceVersion expired: read the object again
                raise
            obj = fetch(api, namespace, name, kind)


def cmd_status(args) -> int:
    api = api_client(args.kubeconfig, args.context)
    namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
    obj = fetch(api, namespace, args.name)
    print(render_status(obj), flush=True)
    if not args.watch:
        return 0
    return watch_status(api, namespace, obj, sys.stdout, timeout=args.timeout)


def _stream_pod(core, namespace: str, pod: dict[str, Any], follow: bool, prefix: str, out: TextIO,
                lock: threading.Lock) -> None:  # fmt: skip
    from kubernetes import client

    name = pod["metadata"]["name"]
    try:
        if follow:
            resp = core.read_namespaced_pod_log(name, namespace, container="trainer", follow=True,
                                                _preload_content=False)  # fmt: skip
            for raw in resp.stream():
                for line in raw.decode(errors="replace").splitlines():
                    with lock:
                        print(prefix + line, file=out, flush=True)
        else:
            text = core.read_namespaced_pod_log(name, namespace, container="trainer") or ""
            with lock:
                print(f"==> pod {name}{' ' + prefix.strip() if prefix else ''}: {len(text.splitlines())} lines <==",
                      file=out)  # fmt: skip
                for line in text.splitlines():
                    print(prefix + line, file=out)
    except client.ApiException as exc:
        with lock:
            print(f"{prefix}cannot read the log of pod {name}: {exc.status} {exc.reason}: "
                  f"{(exc.body or '').strip()[:300]}", file=out, flush=True)  # fmt: skip


def cmd_logs(args) -> int:
    from kubernetes import client

    api = api_client(args.kubeconfig, args.context)
    namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
    obj = fetch(api, namespace, args.name, kind="FineTuneJob")
    job_name = (obj.get("status") or {}).get("jobName")
    if not job_name:
        raise CLIError(f"FineTuneJob {namespace}/{args.name} has no trainer Job yet (phase "
                       f"{(obj.get('status') or {}).get('phase') or 'Pending'}); try again shortly")  # fmt: skip
    core = client.CoreV1Api(api)
    listed = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}")
    pods = select_pods([api.sanitize_for_serialization(p) for p in listed.items], job_name, args.rank)
    if not pods:
        which = f" of rank {args.rank}" if args.rank is not None else ""
        raise CLIError(f"trainer Job {job_name} has no pods{which} (kubectl get pods -n {namespace} "
                       f"-l {JOB_NAME_LABEL}={job_name})")  # fmt: skip
    # One pod per rank: the newest (select_pods puts it first within its rank).
    seen, per_rank = set(), []
    for pod in pods:
        rank = int((pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, 0) or 0)
        if rank not in seen:
            seen.add(rank)
            per_rank.append((rank, pod))
    lock = threading.Lock()
    several = len(per_rank) > 1
    threads = [
        threading.Thread(target=_stream_pod, daemon=True,
                         args=(core, namespace, pod, args.follow, f"[rank {rank}] " if several else "", sys.stdout, lock))
        for rank, pod in per_rank
    ]  # fmt: skip
    for t in threads:
        t.start()
        if not args.follow:
            t.join()  # one pod after the other, in rank order
    for t in threads:
        t.join()
    return 0


def add_arguments(status, logs) -> None:
    """The options of the two subcommands (wired in kubetune.cli)."""
    for parser in (status, logs):
        parser.add_argument(
            "name", metavar="NAME", help="the FineTuneJob" + (" or ModelServe" if parser is status else "")
        )
        parser.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
        parser.add_argument(
            "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
        )
        parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    status.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="follow until the run ends (exit 0 when it succeeded or serves, 1 when it failed or is stuck)",
    )
    status.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with -w: give up after this long (exit 2)",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="stream the logs")
    logs.add_argument(
        "--rank", type=int, default=None, metavar="N", help="only the pod of rank N (default: all ranks)"
    )
    # fmt: skip


def run(command: str, args) -> int:
    try:
        return cmd_status(args) if command == "status" else cmd_logs(args)
    except CLIError as exc:
        print(f"kubetune {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
