"""A Text Generation Inference (TGI) protocol server on loopback, serving a real model with transformers.

TGI itself cannot run here (its launcher and kernels need a GPU); this server answers as TGI's router does,
by TGI's own definitions (tests/serve/tgi_definitions.py: TGI 3.3.4's router/src/server.rs and lib.rs):

    GET  /health              200 when the model is loaded (503 in mode "unhealthy")
    GET  /info                TGI's Info fields (model id, limits, router version): nothing else
    POST /generate            {"inputs", "parameters": {max_new_tokens, adapter_id, do_sample, details, ...}}:
                              one GenerateResponse; return_full_text defaults to false
    POST /                    TGI's compat route (huggingface_hub's InferenceClient posts here when given
                              the server URL): a LIST of one GenerateResponse, and return_full_text defaults
                              to TRUE (a local model folder has no pipeline tag): the prompt is echoed before
                              the generated text unless the client asks otherwise; "stream": true is answered
                              as server-sent events
    POST /generate_stream     server-sent events, one token each, the last carrying generated_text

LoRA adapters (PEFT directories) are loaded by name, as TGI does with LORA_ADAPTERS=name=/path, and
selected per request with ``parameters.adapter_id``; an adapter id the server has not loaded is served by
the base model, without an error, as TGI does (``ADAPTER_TO_INDEX.get(adapter_id, 0)``). Generation is
greedy unless ``do_sample`` is true.

Failure modes for rollback tests, switchable at run time (``server.mode = ...``):

    "ok"         serve the model
    "error"      every generate answers 500 {"error": ..., "error_type": "generation"}
    "wrong"      every generate returns ``server.wrong_output`` instead of the model's text
    "unhealthy"  /health answers 503 (generate still works)

Usage::

    with TGIServer(model_dir, adapters={"support": adapter_dir}) as server:
        server.url   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.loopback import LoopbackServer

MODES = ("ok", "error", "wrong", "unhealthy")


class GenerationError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class TinyModelBackend:
    """A causal LM (and its PEFT LoRA adapters) loaded with transformers on CPU."""

    def __init__(self, model_dir: str | Path, adapters: dict[str, str | Path] | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model_id = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.adapters: dict[str, str] = {}
        if adapters:
            from peft import PeftModel

            items = list(adapters.items())
            name, path = items[0]
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            self.adapters[name] = str(path)
            for name, path in items[1:]:
                model.load_adapter(str(path), adapter_name=name)
                self.adapters[name] = str(path)
        model.eval()
        self.model = model
        self.lock = threading.Lock()
        config = getattr(model, "config", None)
        self.max_positions = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)
        )

    def generate(self, prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        adapter_id = params.get("adapter_id")
        if adapter_id not in self.adapters:  # None, "__base_model__" or one it has not loaded: the base model
            adapter_id = None
        max_new_tokens = int(params.get("max_new_tokens") or 20)
        if max_new_tokens < 1:
            raise GenerationError(422, "`max_new_tokens` must be strictly positive", "validation")
        encoded = self.tokenizer(prompt, return_tensors="pt")
        input_len = encoded["input_ids"].shape[1]
        if input_len + max_new_tokens > self.max_positions:
            raise GenerationError(
                422,
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_positions}. Given: {input_len} `inputs` "
                f"tokens and {max_new_tokens} `max_new_tokens`",
                "validation",
            )
        do_sample = bool(params.get("do_sample"))
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "output_scores": True,
            "return_dict_in_generate": True,
            "pad_token_id": self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
        }
        if do_sample:
            for key in ("temperature", "top_k", "top_p"):
                if params.get(key) is not None:
                    kwargs[key] = params[key]
        with self.lock, torch.no_grad():
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            if self.adapters and adapter_id is not None:
                self.model.set_adapter(adapter_id)
                out = self.model.generate(**encoded, **kwargs)
            elif self.adapters:
                with self.model.disable_adapter():
                    out = self.model.generate(**encoded, **kwargs)
            else:
                out = self.model.generate(**encoded, **kwargs)
        new_ids = out.sequences[0, input_len:].tolist()
        tokens = []
        for step, token_id in enumerate(new_ids):
            logprobs = torch.log_softmax(out.scores[step][0].float(), dim=-1)
            tokens.append(
                {
                    "id": int(token_id),
                    "text": self.tokenizer.decode([token_id]),
                    "logprob": float(logprobs[token_id]),
                    "special": token_id in (self.tokenizer.all_special_ids or []),
                }
            )
        eos = self.tokenizer.eos_token_id
        finish = "eos_token" if new_ids and eos is not None and new_ids[-1] == eos else "length"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if params.get("return_full_text"):  # TGI's router puts the prompt before the generated text
            text = prompt + text
        return {
            "generated_text": text,
            "finish_reason": finish,
            "generated_tokens": len(new_ids),
            "tokens": tokens,
            "seed": params.get("seed"),
        }


class TGIServer(LoopbackServer):
    """A threaded HTTP server speaking TGI's protocol for one backend."""

    MODES = MODES
    THREAD_NAME = "tgi-server"

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backend: TinyModelBackend | None = None,
    ) -> None:
        self.backend = backend or TinyModelBackend(model_dir, adapters)
        self.requests: list[dict[str, Any]] = []
        self.serve(_make_handler(self), host, port)

    # ---- protocol ----

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.backend.model_id,
            "model_sha": None,
            "model_pipeline_tag": None,  # a local folder: no Hub pipeline tag
            "max_concurrent_requests": 128,
            "max_best_of": 1,
            "max_stop_sequences": 4,
            "max_input_tokens": self.backend.max_positions - 1,
            "max_total_tokens": self.backend.max_positions,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "text-generation-router",
            "version": "kubetune-test",
            "sha": None,
            "docker_label": None,
        }

    def generate(self, body: dict[str, Any], *, compat: bool = False) -> dict[str, Any]:
        """COMPAT: the request came to ``POST /``, where return_full_text defaults to true."""
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise GenerationError(422, "`inputs` must be a non-empty string", "validation")
        params = dict(body.get("parameters") or {})
        if params.get("return_full_text") is None:
            params["return_full_text"] = compat
        self.requests.append({"inputs": inputs, "parameters": params, "mode": self.mode})
        if self.mode == "error":
            raise GenerationError(
                500, "CUDA error: device-side assert triggered (simulated by the test)", "generation"
            )
        result = self.backend.generate(inputs, params)
        if self.mode == "wrong":
            echo = inputs if params["return_full_text"] else ""
            result["generated_text"] = echo + self.wrong_output
        return result


def _make_handler(server: TGIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_error(self, error: GenerationError) -> None:
            self._send_json(error.status, {"error": str(error), "error_type": error.error_type})

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/health":
                if server.mode == "unhealthy":
                    self._send_json(503, {"error": "unhealthy (simulated)", "error_type": "healthcheck"})
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
            elif path == "/info":
                self._send_json(200, server.info())
            else:
                self._send_json(404, {"error": f"no route {path}", "error_type": "not_found"})

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as error:
                self._send_json(422, {"error": f"invalid JSON: {error}", "error_type": "validation"})
                return
            if path not in ("/", "/generate", "/generate_stream"):
                self._send_json(404, {"error": f"no route {path}", "error_type": "not_found"})
                return
            stream = path == "/generate_stream" or (path == "/" and bool(body.get("stream")))
            try:
                result = server.generate(body, compat=path == "/")
            except GenerationError as error:
                self._send_error(error)
                return
            except Exception as error:  # a bug in the model code is a 500 like TGI's
                self._send_error(GenerationError(500, f"{type(error).__name__}: {error}", "generation"))
                return
            params = body.get("parameters") or {}
            if stream:
                self._stream(result, bool(params.get("details")))
                return
            payload: dict[str, Any] = {"generated_text": result["generated_text"]}
            if params.get("details"):
                payload["details"] = {
                    "finish_reason": result["finish_reason"],
                    "generated_tokens": result["generated_tokens"],
                    "seed": result["seed"],
                    "prefill": [],
                    "tokens": result["tokens"],
                }
            # TGI's compat route wraps the answer in a list (as the Inference API did).
            self._send_json(200, [payload] if path == "/" else payload)

        def _stream(self, result: dict[str, Any], details: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            tokens = result["tokens"]
            for index, token in enumerate(tokens):
                last = index == len(tokens) - 1
                event = {
                    "index": index + 1,
                    "token": token,
                    "generated_text": result["generated_text"] if last else None,
                    "details": {
                        "finish_reason": result["finish_reason"],
                        "generated_tokens": result["generated_tokens"],
                        "seed": result["seed"],
                    }
                    if last and details
                    else None,
                }
                self.wfile.write(f"data:{json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True

    return Handler


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    """Wait until URL/health answers 200."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == HTTPStatus.OK:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout}s")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    """python -m tests.support.tgi_server MODEL_DIR [--adapter NAME=DIR ...] [--port N]"""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args(argv)
    adapters = dict(item.split("=", 1) for item in args.adapter)
    server = TGIServer(args.model_dir, adapters, port=args.port)
    server.set_mode(args.mode)
    print(f"serving {args.model_dir} at {server.url}", flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
