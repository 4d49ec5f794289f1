"""`kubetune api`: run the gateway on uvicorn with the credentials kubectl would use (in-cluster: the
gateway's own ServiceAccount)."""

from __future__ import annotations

import logging

import uvicorn

from kubetune.reconcile.client import Kube, api_client, load_configuration

from .app import create_app
from .settings import GatewaySettings

log = logging.getLogger("kubetune.gateway")


def build(settings: GatewaySettings):  # -> FastAPI (kept untyped: the type would pull fastapi into callers)
    """The application with its client: a separate field manager, so the gateway's writes are told apart
    from the operator's."""
    kube = Kube(api_client(load_configuration(), settings.kube_connections), field_manager="kubetune-api")
    return create_app(settings, kube)


def run(settings: GatewaySettings, log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    log.info("serving the OpenAI-compatible fine-tuning API on %s:%d (files in %s, read by jobs as %s)",
             settings.host, settings.port, settings.files_dir, settings.files_uri)  # fmt: skip
    # uvicorn's access log has the method, path and status of each request, never its headers (the token).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, proxy_headers=False)


__all__ = ["build", "run"]
