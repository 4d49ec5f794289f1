"""The operator process (``kubetune operator``): load the kopf handlers of both kinds and run kopf.

Like controller-runtime's manager: it owns logging, the liveness endpoint and the watched namespaces;
the handlers start the runtime (kubetune.runtime) with the settings passed here as kopf's memo.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from kubetune import handlers, handlers_modelserve
from kubetune.settings import Settings, load_settings

# The handler modules register themselves with kopf when imported; these names only say so.
HANDLER_MODULES = (handlers, handlers_modelserve)


def run_operator(
    namespaces: list[str] | None = None,
    standalone: bool = True,
    *,
    liveness_endpoint: str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> None:
    """Run the operator until interrupted."""
    cfg = settings or load_settings(**{k: v for k, v in overrides.items() if k in Settings.model_fields})
    if namespaces:
        cfg = cfg.model_copy(update={"namespaces": list(namespaces)})
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.probe", "kopf._core.engines.peering"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if liveness_endpoint is None and cfg.health_port:
        liveness_endpoint = f"http://0.0.0.0:{cfg.health_port}/healthz"
    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=standalone,
            namespaces=cfg.namespaces,
            clusterwide=not cfg.namespaces,
            liveness_endpoint=liveness_endpoint,
            memo=kopf.Memo(settings=cfg),
        )
