"""Credentials the way kubectl finds them, for the operator's client and kopf's login.

``kubernetes.config`` loads them: the pod's ServiceAccount in a cluster, else the current context of
$KUBECONFIG (or ~/.kube/config), with every kind of user the package supports (exec plugins as
EKS/GKE/AKS/OIDC use them, auth-providers, tokens, token files, client certificates) and proxies
($HTTPS_PROXY/$NO_PROXY, and the cluster's ``proxy-url``). Credentials that expire are refreshed by the
package itself before a request (its ``refresh_api_key_hook``: exec plugins are run again, projected
ServiceAccount tokens re-read), one thread at a time. kubetune writes no credentials anywhere (kubeconfigs
are loaded with ``persist_config=False``); the package keeps ``*-data`` certificates in private temporary
files (mode 0600) that it removes at exit, because Python's TLS stack loads client certificates only from
files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config import kube_config

log = logging.getLogger("kubetune.client")


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> k8s.Configuration:
    """The client configuration kubectl would use: in-cluster when the pod's ServiceAccount is
    mounted (and no KUBECONFIG path is given), else the kubeconfig (KUBECONFIG may list several
    files, merged like kubectl). Raises ``kubernetes.config.ConfigException`` when neither works."""
    cfg = k8s.Configuration()
    if kubeconfig is None and not os.environ.get("KUBECONFIG"):
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            _serialize_refreshes(cfg)
            log.debug("credentials: in-cluster ServiceAccount")
            return cfg
        except k8s_config.ConfigException:
            pass
    loader = kube_config._get_kube_config_loader(
        filename=kubeconfig or os.environ.get("KUBECONFIG") or kube_config.KUBE_CONFIG_DEFAULT_LOCATION,
        active_context=context,
        persist_config=False,  # never write refreshed tokens back into the user's files
    )
    loader.load_and_set(cfg)
    # The package reads proxies from $HTTPS_PROXY/$NO_PROXY only; kubectl also honours the cluster's
    # proxy-url (and lets it win over the environment).
    proxy_url = loader._cluster.safe_get("proxy-url")
    if proxy_url:
        cfg.proxy = proxy_url
    _serialize_refreshes(cfg)
    log.debug("credentials: kubeconfig context %s", loader.current_context.get("name"))
    return cfg


def _serialize_refreshes(cfg: k8s.Configuration) -> None:
    """Run the package's credential refresh (an exec plugin, a token file) one thread at a time.

    Every request calls ``refresh_api_key_hook``; when the credential expired, all worker threads
    would run the exec plugin at once. The package's hook re-installs itself on each refresh, so the
    wrapper keeps track of the current one.
    """
    inner: Callable[[k8s.Configuration], None] | None = cfg.refresh_api_key_hook
    if inner is None:
        return
    lock = threading.Lock()
    current = [inner]

    def refresh(c: k8s.Configuration) -> None:
        with lock:
            current[0](c)
            if c.refresh_api_key_hook is not refresh:
                current[0] = c.refresh_api_key_hook
                c.refresh_api_key_hook = refresh

    cfg.refresh_api_key_hook = refresh


def bearer_token(cfg: k8s.Configuration) -> str | None:
    """The current bearer token of CFG (refreshed first when it expired), without the scheme."""
    header = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token if token else scheme


__all__ = ["bearer_token", "load_configuration"]
