"""Read a model's config.json (never its weights) for the fit check: the I/O beside kubetune.api.fit.

Who reads what (docs/fit-and-evaluation.md): ``kubetune validate`` and ``kubetune train --dry-run`` read
file:// models and hf:// models in the local Hugging Face cache (the Hub itself only when asked); the
operator reads hf:// models from the Hub (huggingface_hub, with the model's token Secret) and takes a chained
job's model from that job's status.estimate. pvc:// and s3:// models are read where they are mounted:
by the trainer, before it loads any weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import parse_uri

CONFIG_FILE = "config.json"


class ConfigUnavailable(Exception):
    """config.json cannot be read from here (the message says why and what would help)."""


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ConfigUnavailable(f"{where} is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigUnavailable(f"{where} is not a JSON object")
    return config


def read_file(path: str | Path) -> dict[str, Any]:
    """config.json from a file, or from a model folder."""
    target = Path(path)
    if target.is_dir():
        target = target / CONFIG_FILE
    try:
        return _parse(target.read_text(), str(target))
    except OSError as error:
        raise ConfigUnavailable(f"cannot read {target}: {error.strerror or error}") from None


def read_hub(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    cached_only: bool = False,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """config.json of a Hub model: from the local Hugging Face cache, else (unless CACHED_ONLY) one GET of that
    one small file through huggingface_hub's session (its headers, token and endpoint; no retries: an
    unreachable Hub is an answer, "unknown", not a wait)."""
    from huggingface_hub import constants, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    found = try_to_load_from_cache(repo_id, CONFIG_FILE, revision=revision)
    if isinstance(found, str):
        return read_file(found)
    if cached_only or constants.HF_HUB_OFFLINE:
        raise ConfigUnavailable(
            f"hf://{repo_id}: config.json is not in the local Hugging Face cache "
            + ("(HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else
               "(--fetch-config reads it from the Hub; --model-config FILE gives it)")
        )  # fmt: skip
    url = hf_hub_url(repo_id, CONFIG_FILE, revision=revision)
    try:
        response = get_session().get(
            url, headers=build_hf_headers(token=token), timeout=timeout, follow_redirects=True
        )
        hf_raise_for_status(response)
    except Exception as error:  # noqa: BLE001 - offline, gated, missing: all mean "unknown"
        reason = " ".join(str(error).split())[:300]
        raise ConfigUnavailable(f"hf://{repo_id}: cannot read config.json from the Hub: {reason}") from None
    return _parse(response.text, url)


def read_local(uri: str, revision: str | None = None, *, fetch: bool = False) -> dict[str, Any]:
    """config.json of a model URI as a command on this machine can read it: file:// directly, hf:// from the
    local cache (or the Hub when FETCH); pvc:// and s3:// are not readable here."""
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return read_file(parsed.path)
    if parsed.scheme == "hf":
        return read_hub(parsed.hf_repo_id, revision, cached_only=not fetch)
    raise ConfigUnavailable(
        f"{uri}: a {parsed.scheme}:// model's config.json is read where it is mounted (the trainer checks the fit "
        "before loading weights); give it here with --model-config FILE"
    )


class ConfigCache:
    """The operator's reads of config.json and of the GPU nodes, kept for a while: a burst of FineTuneJobs of
    one model reads its config once, and an unreachable Hub is asked again only after FAILURE_TTL seconds.
    Thread-safe (the work queue decides on several threads)."""

    def __init__(self, ttl: float = 3600.0, failure_ttl: float = 60.0, nodes_ttl: float = 30.0, clock=None):
        import threading
        import time

        self.ttl, self.failure_ttl, self.nodes_ttl = ttl, failure_ttl, nodes_ttl
        self.clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._configs: dict[tuple[str, str | None], tuple[float, dict[str, Any] | None, str | None]] = {}
        self._nodes: tuple[float, list[dict[str, Any]]] | None = None

    def config(
        self, uri: str, revision: str | None, token: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(config.json, None) or (None, why it cannot be read) for the model at URI, as the operator reads it:
        hf:// from the Hub; pvc:// and s3:// are read where they are mounted (not by the operator)."""
        key = (uri, revision)
        with self._lock:
            hit = self._configs.get(key)
        if hit is not None and self.clock() < hit[0]:
            return hit[1], hit[2]
        parsed = parse_uri(uri)
        config: dict[str, Any] | None = None
        why: str | None = None
        if parsed.scheme == "hf":
            try:
                config = read_hub(parsed.hf_repo_id, revision, token=token)
            except ConfigUnavailable as error:
                why = str(error)
        else:
            why = (f"{uri}: the operator does not mount {parsed.scheme}:// models; the estimate is made for hf:// "
                   "models (and chains of them)")  # fmt: skip
        ttl = self.ttl if config is not None else self.failure_ttl
        with self._lock:
            self._configs[key] = (self.clock() + ttl, config, why)
        return config, why

    def nodes(self, list_nodes) -> list[dict[str, Any]]:
        """The cluster's nodes (LIST_NODES() reads them), at most NODES_TTL seconds old."""
        with self._lock:
            cached = self._nodes
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        found = list_nodes()
        with self._lock:
            self._nodes = (self.clock() + self.nodes_ttl, found)
        return found
