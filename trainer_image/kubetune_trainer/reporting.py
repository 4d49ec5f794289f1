"""Progress, checkpoints and the result: to the FineTuneJob's status, to Prometheus and to the console.

In a cluster (``runtime.reportStatus``) the main process patches ``status.progress`` (at most every
``KUBETUNE_REPORT_INTERVAL`` seconds, default 5, and always at the end), ``status.checkpoint`` after each
save and ``status.result`` at the end: JSON merge patches to the ``status`` subresource of exactly this
FineTuneJob (name and namespace from the config; its uid is checked before the first patch), made with the pod's
ServiceAccount (or ``$KUBECONFIG`` when set, for tests and local runs against a cluster). A failed patch is
logged and never stops training. Locally the same figures go to the console.

The main process also serves Prometheus gauges on ``runtime.metricsPort``: kubetune_trainer_step,
_total_steps, _epoch, _loss, _eval_loss, _learning_rate, _tokens_per_second (non-padding tokens over all
processes, from the Trainer's ``num_input_tokens_seen``), _tokens_seen.

Entry points used by the training code: ``make_callbacks(config)``, ``report_checkpoint(config, uri,
step)``, ``report_result(config, result)`` and ``report_stalled(config, reason, message)``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from transformers import TrainerCallback

from kubetune.api.v1alpha1 import GROUP, VERSION, ResultStatus, TrainerConfig
from kubetune.api.v1alpha1.trainerconfig import ENV_REPORT_STATUS

log = logging.getLogger("kubetune_trainer.reporting")

PLURAL = "finetunejobs"
ENV_REPORT_INTERVAL = "KUBETUNE_REPORT_INTERVAL"
DEFAULT_REPORT_INTERVAL = 5.0
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_main_process() -> bool:
    """Rank 0 of the whole run (torchrun/accelerate set RANK in every worker; a single process has none)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reports_status(config: TrainerConfig) -> bool:
    """runtime.reportStatus, unless $KUBETUNE_REPORT_STATUS (set by the operator's pod template) says otherwise."""
    raw = os.environ.get(ENV_REPORT_STATUS, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return config.runtime.report_status


def report_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_REPORT_INTERVAL, DEFAULT_REPORT_INTERVAL)))
    except ValueError:
        return DEFAULT_REPORT_INTERVAL


# ---------------------------------------------------------------------------------------------- status


def job_namespace(config: TrainerConfig) -> str | None:
    """The FineTuneJob's namespace: from the config, else $POD_NAMESPACE, else the ServiceAccount's."""
    if config.job.metadata.namespace:
        return config.job.metadata.namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip() or None
    except OSError:
        return None


def _api_client():
    """A client with the pod's ServiceAccount, or $KUBECONFIG's current context when that is set."""
    from kubernetes import client, config

    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig.split(os.pathsep)[0])
    config.load_incluster_config()
    return client.ApiClient()


class StatusWriter:
    """JSON merge patches to one FineTuneJob's status subresource. Thread-safe; never raises.

    Before its first patch it reads the object (``get`` on finetunejobs/status) and turns itself off when
    the uid is not this run's: the name now belongs to another FineTuneJob."""

    def __init__(self, config: TrainerConfig, api_client=None) -> None:
        self.name = config.job.metadata.name
        self.namespace = job_namespace(config)
        self.uid = config.runtime.uid
        self._api = api_client
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._uid_checked = False
        self.patches = 0
        self.failures = 0

    def _client(self):
        if self._api is None and self._broken is None:
            try:
                self._api = _api_client()
            except Exception as exc:  # noqa: BLE001 - no credentials: report nothing, train anyway
                self._broken = f"no Kubernetes credentials ({exc})"
                log.warning("status reporting is off: %s", self._broken)
        return self._api

    def _same_object(self, api) -> bool:
        """Once per writer: the object of that name is this run's FineTuneJob (its uid), not one deleted and
        re-created meanwhile. (A uid in a merge patch is no precondition on the status subresource.)"""
        if self._uid_checked or not self.uid:
            return True
        from kubernetes import client

        try:
            current = client.CustomObjectsApi(api).get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=10
            )
        except Exception as exc:  # noqa: BLE001 - try again with the next report
            self.failures += 1
            log.warning(
                "could not read FineTuneJob %s/%s: %s", self.namespace, self.name, getattr(exc, "reason", exc)
            )
            return False
        uid = (current.get("metadata") or {}).get("uid")
        if uid != self.uid:
            self._broken = f"FineTuneJob {self.namespace}/{self.name} is another object (uid {uid}, this run's is {self.uid})"
            log.warning("status reporting is off: %s", self._broken)
            return False
        self._uid_checked = True
        return True

    def patch(self, status: dict[str, Any]) -> bool:
        """Merge STATUS into .status; True when the API server accepted it."""
        with self._lock:
            if self._broken is not None:
                return False
            if not self.name or not self.namespace:
                self._broken = "the FineTuneJob's name or namespace is unknown"
                log.warning("status reporting is off: %s", self._broken)
                return False
            api = self._client()
            if api is None:
                return False
            if not self._same_object(api):
                return False
            body: dict[str, Any] = {"status": status}
            try:
                from kubernetes import client

                client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=10,
                )
            except Exception as exc:  # noqa: BLE001 - reporting must never stop training
                self.failures += 1
                reason = getattr(exc, "reason", None) or exc
                status_code = getattr(exc, "status", None)
                log.warning(
                    "could not patch the status of FineTuneJob %s/%s%s: %s",
                    self.namespace,
                    self.name,
                    f" (HTTP {status_code})" if status_code else "",
                    reason,
                )
                return False
            self.patches += 1
            return True


# ---------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus gauges on their own registry, served over HTTP on the main process."""

    NAMES = {
        "step": "Optimizer steps done",
        "total_steps": "Optimizer steps planned",
        "epoch": "Epochs done (fractional)",
        "loss": "Latest training loss",
        "eval_loss": "Latest evaluation loss",
        "learning_rate": "Current learning rate",
        "tokens_per_second": "Training throughput in non-padding tokens per second over all processes",
        "tokens_seen": "Non-padding input tokens trained on so far",
        "reward": "grpo/rloo: mean reward of the latest generations",
        "reward_std": "grpo/rloo: standard deviation of the latest rewards",
        "kl": "grpo/rloo: KL divergence to the reference model",
    }

    def __init__(self, config: TrainerConfig) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        labels = {
            "finetunejob": config.job.metadata.name or "",
            "namespace": config.job.metadata.namespace or "",
        }
        self.gauges = {}
        for name, doc in self.NAMES.items():
            gauge = Gauge(f"kubetune_trainer_{name}", doc, list(labels), registry=self.registry)
            self.gauges[name] = gauge.labels(**labels)
        self.server: WSGIServer | None = None  # prometheus_client's start_http_server
        self.port: int | None = None

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(port, registry=self.registry)
            self.port = self.server.server_port
            log.info("Prometheus metrics on :%d/metrics", self.port)
        except OSError as exc:
            log.warning("cannot serve Prometheus metrics on port %d: %s", port, exc)

    def set(self, **values: float | None) -> None:
        for name, value in values.items():
            if value is not None:
                self.gauges[name].set(value)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# ---------------------------------------------------------------------------------------------- callback


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(progress: dict[str, Any]) -> str:
    """One concise console line from a progress dict (camelCase keys)."""
    parts = [f"step {progress['step']}/{progress['totalSteps']} ({progress['percent']:.1f}%)"]
    parts.append(f"epoch {progress['epoch']:.2f}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval_loss {progress['evalLoss']:.4f}")
    if progress.get("learningRate") is not None:
        parts.append(f"lr {progress['learningRate']:.2e}")
    for key, label in (("reward", "reward"), ("rewardStd", "reward_std"), ("kl", "kl")):  # grpo/rloo
        if progress.get(key) is not None:
            parts.append(f"{label} {progress[key]:.4f}")
    if progress.get("tokensPerSecond") is not None:
        parts.append(f"{progress['tokensPerSecond']:,.0f} tok/s")
    if progress.get("etaSeconds") is not None:
        parts.append(f"eta {_fmt_duration(progress['etaSeconds'])}")
    return " | ".join(parts)


def _console(line: str) -> None:
    try:
        from tqdm.auto import tqdm

        tqdm.write(line)
    except Exception:  # noqa: BLE001
        print(line, flush=True)


class ReportingCallback(TrainerCallback):
    """Turns the Trainer's events into status patches (cluster), console lines (local) and gauges."""

    def __init__(
        self,
        config: TrainerConfig,
        writer: StatusWriter | None = None,
        metrics: Metrics | None = None,
        interval: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self.config = config
        self.cluster = reports_status(config)
        self.writer = writer if writer is not None else (StatusWriter(config) if self.cluster else None)
        self.metrics = metrics
        self.interval = report_interval() if interval is None else interval
        self.clock = clock
        self.last_report: float | None = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.learning_rate: float | None = None
        self.tokens_per_second: float | None = None
        self.rl: dict[str, float | None] = {}  # grpo/rloo: reward, rewardStd, kl (from the trainer's logs)
        self._start: tuple[float, int] | None = None  # (time, step) when this session's training began
        self._tokens_mark: tuple[float, int] | None = None  # (time, tokens seen) at the previous log
        self.last_progress: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers

    def _progress(self, state) -> dict[str, Any]:
        step = int(state.global_step or 0)
        total = int(state.max_steps or 0)
        eta = None
        if self._start is not None and total:
            t0, step0 = self._start
            done = step - step0
            if done > 0:
                eta = round((self.clock() - t0) / done * max(total - step, 0), 1)
        return {
            "step": step,
            "totalSteps": total,
            "epoch": round(float(state.epoch or 0.0), 4),
            "percent": round(100.0 * step / total, 2) if total else 0.0,
            "loss": self.loss,
            "evalLoss": self.eval_loss,
            "learningRate": self.learning_rate,
            "tokensPerSecond": self.tokens_per_second,
            "etaSeconds": eta,
            **self.rl,
            "updatedAt": _now(),
        }

    def _publish(self, state, force: bool = False, console: bool = False, clear_reason: bool = False) -> None:
        progress = self._progress(state)
        if clear_reason:  # a new attempt trains again: a previous attempt's Stalled no longer holds
            progress.update(reason=None, message=None)
        self.last_progress = progress
        if self.metrics is not None:
            self.metrics.set(
                step=progress["step"],
                total_steps=progress["totalSteps"],
                epoch=progress["epoch"],
                loss=self.loss,
                eval_loss=self.eval_loss,
                learning_rate=self.learning_rate,
                tokens_per_second=self.tokens_per_second,
                tokens_seen=getattr(state, "num_input_tokens_seen", None) or None,
                reward=self.rl.get("reward"),
                reward_std=self.rl.get("rewardStd"),
                kl=self.rl.get("kl"),
            )
        if not self.cluster:
            if console:
                _console(progress_line(progress))
            return
        now = self.clock()
        if not force and self.last_report is not None and now - self.last_report < self.interval:
            return
        self.last_report = now
        if self.writer is not None:
            self.writer.patch({"progress": progress})

    # ------------------------------------------------------------------ Trainer events

    def on_init_end(self, args, state, control, **kwargs):
        # Tokens per second counts real tokens: the Trainer counts the non-padding input tokens (from the
        # attention mask, or ids != pad for padding-free batches), gathered over all processes. Every rank
        # must agree on this, and every rank runs this callback.
        if getattr(args, "include_num_input_tokens_seen", "no") != "non_padding":
            args.include_num_input_tokens_seen = "non_padding"
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            now = self.clock()
            self._start = (now, int(state.global_step or 0))
            self._tokens_mark = (now, int(getattr(state, "num_input_tokens_seen", 0) or 0))
            self._publish(state, force=True, clear_reason=True)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return control
        logs = logs or {}
        if "loss" in logs:
            self.loss = _finite(logs["loss"])
        if "learning_rate" in logs:
            self.learning_rate = _finite(logs["learning_rate"])
        if "eval_loss" in logs:
            self.eval_loss = _finite(logs["eval_loss"])
        for key, field in (("reward", "reward"), ("reward_std", "rewardStd"), ("kl", "kl")):
            if key in logs:
                self.rl[field] = _finite(logs[key])
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        now = self.clock()
        if self._tokens_mark is not None and tokens:
            t_prev, tok_prev = self._tokens_mark
            if now > t_prev and tokens > tok_prev:
                self.tokens_per_second = round((tokens - tok_prev) / (now - t_prev), 1)
                self._tokens_mark = (now, tokens)
        training_log = "loss" in logs or "eval_loss" in logs or "reward" in logs
        self._publish(state, console=training_log)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            self.eval_loss = _finite(metrics["eval_loss"])
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._publish(state, force=True)
        return control


def make_callbacks(config: TrainerConfig) -> list[TrainerCallback]:
    """The callbacks the training code adds to its Trainer (on every process; only rank 0 reports)."""
    metrics = None
    if config.runtime.metrics_port is not None and is_main_process():
        metrics = _shared_metrics(config)
    return [ReportingCallback(config, metrics=metrics)]


_METRICS: dict[int, Metrics] = {}


def _shared_metrics(config: TrainerConfig) -> Metrics:
    """One metrics server per port and process (make_callbacks may be called more than once)."""
    port = int(config.runtime.metrics_port or 0)
    if port not in _METRICS or port == 0:
        metrics = Metrics(config)
        metrics.serve(port)
        _METRICS[port] = metrics
    return _METRICS[port]


# ---------------------------------------------------------------------------------------------- one-shots


def report_checkpoint(config: TrainerConfig, uri: str, step: int) -> None:
    """A complete checkpoint was saved at URI after STEP steps."""
    if not is_main_process():
        return
    checkpoint = {"uri": uri, "step": int(step), "savedAt": _now()}
    if reports_status(config):
        StatusWriter(config).patch({"checkpoint": checkpoint})
    else:
        _console(f"checkpoint at step {step}: {uri}")


def report_result(config: TrainerConfig, result: dict[str, Any]) -> None:
    """The run's result (ResultStatus fields, snake_case or camelCase): status.result, or the console."""
    if not is_main_process():
        return
    try:
        body = ResultStatus.model_validate(result).model_dump(by_alias=True, mode="json")
    except Exception as exc:  # noqa: BLE001 - a malformed result is still worth reporting
        log.warning("the result does not match status.result's schema (%s); reporting what fits", exc)
        fields = set(ResultStatus.model_fields) | {
            f.alias for f in ResultStatus.model_fields.values() if f.alias
        }
        body = {k: v for k, v in result.items() if k in fields}
    metrics = body.get("metrics") or {}
    body["metrics"] = {k: v for k, v in ((k, _finite(v)) for k, v in metrics.items()) if v is not None}
    if reports_status(config):
        StatusWriter(config).patch({"result": body})
    else:
        _console(f"result: {body.get('kind') or 'model'} at {body.get('uri')}")
        if body.get("mergedUri"):
            _console(f"merged model: {body['mergedUri']}")
        for key, value in sorted(body["metrics"].items()):
            _console(f"  {key}: {value:.6g}")


def report_stalled(config: TrainerConfig, reason: str, message: str) -> None:
    """The attempt ends early (stall.py): status.progress.reason/message, or the console."""
    if not is_main_process():
        return
    if reports_status(config):
        StatusWriter(config).patch({"progress": {"reason": reason, "message": message, "updatedAt": _now()}})
    else:
        _console(f"{reason.lower()}: {message}")
