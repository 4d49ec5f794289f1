"""A vLLM OpenAI-compatible server on loopback, serving a real model with transformers + PEFT.

It answers the routes of ``vllm serve`` (vllm/entrypoints/openai: api_server.py, serving_models.py,
protocol.py) with vLLM's request and answer shapes:

    GET  /health                   200 (empty body)
    GET  /v1/models                {"object": "list", "data": [ModelCard...]}: the base model under its
                                   served name (root: the model path), each adapter (root: its lora_path,
                                   parent: the served name)
    POST /v1/completions           {model, prompt, max_tokens, temperature, ...}
    POST /v1/chat/completions      {model, messages, max_tokens | max_completion_tokens, temperature, ...}
    POST /v1/load_lora_adapter     {lora_name, lora_path, load_inplace}: 200 "Success: LoRA adapter
                                   'NAME' added successfully." (text/plain)
    POST /v1/unload_lora_adapter   {lora_name}: 200 "Success: LoRA adapter 'NAME' removed successfully."

Errors are vLLM's ErrorResponse: ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP
status: an unknown model is 404 NotFoundError (param "model"); a name loaded twice without
``load_inplace`` 400 InvalidUserInput; unloading an unknown adapter 404 NotFoundError; a lora_path that
does not exist 404 NotFoundError ("No adapter found for PATH"); weights that do not load 500
InternalServerError with the loader's message. The two LoRA routes exist only with runtime updates on
(VLLM_ALLOW_RUNTIME_LORA_UPDATING), as in vLLM.

Several pods in one process: each pod is a path prefix ``/pods/NAME`` with its own adapter registry
(what that vLLM process has loaded); the bare routes are "the Service" and go to the first pod. A pod
starts with ``initial_adapters(POD)`` (what ``--lora-modules`` of its pod says) the first time it
is addressed, like a vLLM process that just started. Paths the operator gives (a pod's mount paths,
e.g. /mnt/pvc/CLAIM/...) are mapped to this machine's folders by ``path_map``.

Generation is greedy at temperature 0 (the only mode the operator uses). One model, shared by the
pods; adapters are loaded into it once per path (transformers' PEFT integration) and selected per
request.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.loopback import LoopbackServer

MODES = ("ok", "error", "wrong")


class VLLMError(Exception):
    """An ErrorResponse: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.err_type, self.param = status, err_type, param

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": str(self), "type": self.err_type, "param": self.param, "code": self.status}
        }


class Backend:
    """One causal LM on CPU; LoRA adapters loaded into it by path, selected per request."""

    def __init__(self, model_dir: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.by_path: dict[str, str] = {}  # local path -> PEFT adapter name
        self.lock = threading.Lock()
        config = self.model.config
        self.max_model_len = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        )

    def load(self, local: Path) -> str:
        """The PEFT adapter name of the adapter at LOCAL (loaded once); raises what PEFT raises."""
        key = str(local)
        with self.lock:
            if key not in self.by_path:
                name = "a" + hashlib.sha256(key.encode()).hexdigest()[:12]
                self.model.load_adapter(key, adapter_name=name)
                self.by_path[key] = name
            return self.by_path[key]

    def complete(self, prompt: str, max_tokens: int, adapter: str | None) -> tuple[str, int, int, str]:
        """(text, prompt tokens, completion tokens, finish reason), greedy."""
        torch = self.torch
        encoded = self.tokenizer(prompt, return_tensors="pt")
        n_prompt = int(encoded["input_ids"].shape[1])
        if n_prompt + max_tokens > self.max_model_len:
            raise VLLMError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        with self.lock, torch.no_grad():
            if self.by_path:
                if adapter is None:
                    self.model.disable_adapters()
                else:
                    self.model.set_adapter(adapter)
                    self.model.enable_adapters()
            out = self.model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
        new_ids = out[0, n_prompt:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if new_ids and eos is not None and new_ids[-1] == eos else "length"
        return self.tokenizer.decode(new_ids, skip_special_tokens=True), n_prompt, len(new_ids), finish


class Pod:
    """What one vLLM process has loaded: served adapter name -> (lora_path, lora_int_id)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loras: dict[str, tuple[str, int]] = {}
        self.lock = threading.Lock()


class VLLMServer(LoopbackServer):
    """A threaded HTTP server speaking vLLM's OpenAI-compatible protocol for one model, many pods."""

    MODES = MODES
    THREAD_NAME = "vllm-server"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        served_model_name: str,
        path_map: Callable[[str], Path] | None = None,
        initial_adapters: Callable[[str], dict[str, str]] | None = None,
        runtime_lora_updating: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        backend: Backend | None = None,
    ) -> None:
        self.backend = backend or Backend(model_dir)
        self.model_path = str(model_dir)
        self.served_model_name = served_model_name
        self.path_map = path_map or Path
        self.initial_adapters = initial_adapters or (lambda pod: {})
        self.runtime_lora_updating = runtime_lora_updating
        self.pods: dict[str, Pod] = {}
        self.requests: list[dict[str, Any]] = []
        self._ids = 0
        self._lock = threading.Lock()
        self.serve(_make_handler(self), host, port)

    def pod_url(self, pod: str) -> str:
        return f"{self.url}/pods/{pod}"

    # ---- pods ----

    def pod(self, name: str | None) -> Pod:
        """The pod NAME (None: the Service, i.e. the first pod); a new one starts with its --lora-modules."""
        with self._lock:
            if name is None:
                name = min(self.pods) if self.pods else "service"
            if name not in self.pods:
                pod = Pod(name)
                for lora_name, lora_path in self.initial_adapters(name).items():
                    # vLLM loads --lora-modules at start and refuses to start when one fails.
                    self._load(pod, lora_name, lora_path, inplace=False)
                self.pods[name] = pod
            return self.pods[name]

    def loaded(self, pod: str) -> dict[str, str]:
        """Adapter name -> lora_path on POD (for the tests' assertions)."""
        return {name: path for name, (path, _) in self.pod(pod).loras.items()}

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _load(self, pod: Pod, name: str, path: str, *, inplace: bool) -> None:
        local = self.path_map(path)
        if not local.exists():
            raise VLLMError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        try:
            self.backend.load(local)
        except Exception as error:  # what the engine's loader raises ends up in a 500
            raise VLLMError(500, f"{type(error).__name__}: {error}", "InternalServerError") from None
        old = pod.loras.get(name)
        pod.loras[name] = (path, old[1] if old else self._next_id())

    # ---- protocol ----

    def models(self, pod: Pod) -> dict[str, Any]:
        created = int(time.time())
        perm = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False}  # fmt: skip
        data = [{"id": self.served_model_name, "object": "model", "created": created, "owned_by": "vllm",
                 "root": self.model_path, "parent": None, "max_model_len": self.backend.max_model_len,
                 "permission": [perm]}]  # fmt: skip
        for name, (path, _) in sorted(pod.loras.items()):
            data.append({"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                         "parent": self.served_model_name, "max_model_len": None, "permission": [perm]})  # fmt: skip
        return {"object": "list", "data": data}

    def load_lora(self, pod: Pod, body: dict[str, Any]) -> str:
        name, path, inplace = body.get("lora_name"), body.get("lora_path"), bool(body.get("load_inplace"))
        if not name or not path:
            raise VLLMError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        with pod.lock:
            if not inplace and name in pod.loras:
                raise VLLMError(
                    400,
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                    "place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                )
            self._load(pod, name, path, inplace=inplace)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora(self, pod: Pod, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if not name:
            raise VLLMError(
                400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
            )
        with pod.lock:
            if name not in pod.loras:
                raise VLLMError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del pod.loras[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _target(self, pod: Pod, model: Any) -> str | None:
        """The PEFT adapter of MODEL on POD (None: the base model); an unknown model is vLLM's 404."""
        if model in (None, "", self.served_model_name):
            return None
        entry = pod.loras.get(model)
        if entry is None:
            raise VLLMError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return self.backend.load(self.path_map(entry[0]))

    def completion(self, pod: Pod, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise VLLMError(
                400, "prompt must be a string (this test server takes one prompt)", "BadRequestError"
            )
        return self._generate(pod, body, prompt, "text_completion", "cmpl")

    def chat(self, pod: Pod, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        tokenizer = self.backend.tokenizer
        if not tokenizer.chat_template:
            raise VLLMError(
                400,
                "As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
                "chat template if the tokenizer does not define one.",
                "BadRequestError",
            )
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._generate(pod, body, prompt, "chat.completion", "chatcmpl")

    def _generate(self, pod: Pod, body: dict[str, Any], prompt: str, obj: str, prefix: str) -> dict[str, Any]:
        adapter = self._target(pod, body.get("model"))
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if self.mode == "error":
            raise VLLMError(500, "CUDA error: device-side assert triggered (simulated by the test)",
                            "InternalServerError")  # fmt: skip
        text, n_prompt, n_out, finish = self.backend.complete(prompt, max_tokens, adapter)
        if self.mode == "wrong":
            text = self.wrong_output
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        if obj == "chat.completion":
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": body.get("model") or self.served_model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": n_prompt,
                "total_tokens": n_prompt + n_out,
                "completion_tokens": n_out,
            },
        }


def _make_handler(server: VLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
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

        def do_GET(self) -> None:
            pod_name, path = self._route()
            if path == "/health":
                self._send(200, "", "text/plain")
            elif path == "/v1/models":
                self._send(200, server.models(server.pod(pod_name)))
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            pod_name, path = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as error:
                self._send(400, VLLMError(400, f"invalid JSON: {error}", "BadRequestError").body())
                return
            routes: dict[str, Callable[[Pod, dict[str, Any]], Any]] = {
                "/v1/completions": server.completion,
                "/v1/chat/completions": server.chat,
            }
            if server.runtime_lora_updating:
                routes |= {
                    "/v1/load_lora_adapter": server.load_lora,
                    "/v1/unload_lora_adapter": server.unload_lora,
                }
            if path not in routes:
                self._send(404, {"detail": "Not Found"})
                return
            pod = server.pod(pod_name)
            server.requests.append({"pod": pod.name, "path": path, "body": body})
            try:
                result = routes[path](pod, body)
            except VLLMError as error:
                self._send(error.status, error.body())
                return
            if isinstance(result, str):
                self._send(200, result, "text/plain; charset=utf-8")
            else:
                self._send(200, result)

    return Handler
