"""pytest plugin: a real Kubernetes API server for cluster tests (registered in tests/conftest.py).

Fixtures
--------
``kube`` (session scope) -> :class:`KubeCluster`
    ``kube.kubeconfig``   path (str) of an admin kubeconfig
    ``kube.api``          ``kubernetes.client.ApiClient`` for that admin
    ``kube.flavor``       ``"local"`` (the control plane of tests/support/controlplane.py),
                          ``"external"`` (KUBETUNE_TEST_KUBECONFIG) or ``"kind"``
    ``kube.kwok``         True when pods are faked by kwok (Job pods complete; outcome labels work)
    ``kube.env()``        a copy of os.environ with KUBECONFIG set, for subprocesses (the operator, kubectl)
    ``kube.new_namespace(prefix)``  create a namespace and wait for its default ServiceAccount
    ``kube.drop_pods(namespace)``   delete its pods now (no grace period, no Job finalizer)
    ``kube.restart_apiserver()``    local only: restart THE kube-apiserver process (same port, same etcd);
                                    this disturbs concurrent sessions sharing the cluster, so prefer
    ``kube.control_plane.extra_apiserver()``  (context manager) a second kube-apiserver on the same etcd
                                    with ``.server``, ``.restart()``, ``.pid``; ``kube.client_for(server)``,
                                    ``kube.kubeconfig_for(server, path)``
    ``kube.control_plane``          the ControlPlane object (local only), e.g. for its ports or logs
``namespace`` (function scope) -> str
    a fresh namespace for the test, deleted afterwards.

Tests that use ``kube`` are marked ``cluster`` automatically (so ``-m "not cluster"`` skips them).
Mark tests that need kwok's fake pods with ``@pytest.mark.kwok``: they are skipped on kind and external
clusters, never on the local control plane. To make a fake pod fail, label it
``kwok.kubetune.io/outcome: fail`` (see tests/support/controlplane.py for all the knobs).

Environment
-----------
``KUBETUNE_TEST_KUBECONFIG=path``  use that cluster; nothing is started or stopped.
                                   ``KUBETUNE_TEST_KWOK=1`` says it runs this repo's kwok stages.
``KUBETUNE_TEST_CLUSTER=kind``     create (or reuse) the kind cluster ``KUBETUNE_KIND_NAME``
                                   (default kubetune-test; needs Docker and ``kind`` on PATH or $KIND;
                                   ``KUBETUNE_KIND_IMAGE`` picks the node image). Deleted at the end
                                   when this session created it.
``KUBETUNE_TEST_KEEP_CLUSTER=1``   leave the local control plane / kind cluster running at the end.

The local control plane is started once per session, or reused when ``make cluster-up`` (or another
session) already runs one; it is stopped at the end only by the session that started it, and only
once no other pytest session still uses it. Its binaries are built (hack/testbin.sh) right after
collection when cluster tests were selected and they are missing: a build failure makes every
cluster test error, it never skips them. When a cluster test fails, the tail of each component's
log is added to the report.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import controlplane as cpmod
from tests.support.waiting import wait_for

FIXTURE = "kube"
_build_error: Exception | None = None


def flavor_from_env() -> str:
    if os.environ.get("KUBETUNE_TEST_KUBECONFIG"):
        return "external"
    wanted = os.environ.get("KUBETUNE_TEST_CLUSTER", "local").strip().lower() or "local"
    if wanted not in ("local", "kind"):
        raise pytest.UsageError(f"KUBETUNE_TEST_CLUSTER={wanted!r}: expected 'local' or 'kind'")
    return wanted


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class KubeCluster:
    kubeconfig: str
    flavor: str
    kwok: bool
    control_plane: cpmod.ControlPlane | None = None
    _api: object | None = field(default=None, repr=False)

    @property
    def api(self):
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=self.kubeconfig)
        return self._api

    def client_for(self, server: str):
        """An admin ApiClient for another API server of this cluster (e.g. an extra_apiserver)."""
        from kubernetes import config

        api = config.new_client_from_config(config_file=self.kubeconfig)
        api.configuration.host = server
        return api

    def kubeconfig_for(self, server: str, path: Path) -> str:
        """The admin kubeconfig pointed at another API server of this cluster, written to PATH (for a
        subprocess such as the operator)."""
        import yaml

        config = yaml.safe_load(Path(self.kubeconfig).read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = server
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return str(path)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        env.update(extra)
        return env

    def new_namespace(self, prefix: str = "t", timeout: float = 60.0) -> str:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubetune.io/test": "true"}))
        )
        # Pods cannot be created before the ServiceAccount controller made "default".
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            timeout,
            0.1,
            f"the default ServiceAccount of namespace {name}",
        )
        return name

    def drop_pods(self, namespace: str) -> None:
        """Delete NAMESPACE's pods now: no grace period, the Job controller's finalizer removed (it outlives
        the Job). Fake pods that never finish would otherwise hold their GPUs through their grace period."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        with contextlib.suppress(client.ApiException):
            core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
            for pod in core.list_namespaced_pod(namespace).items:
                if pod.metadata.finalizers:
                    core.patch_namespaced_pod(
                        pod.metadata.name, namespace, {"metadata": {"finalizers": None}}
                    )

    def delete_namespace(self, name: str) -> None:
        from kubernetes import client

        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(self.api).delete_namespace(name)

    def restart_apiserver(self) -> None:
        if self.control_plane is None:
            raise RuntimeError(f"cannot restart the API server of a {self.flavor} cluster")
        self.control_plane.restart("kube-apiserver")

    def log_tails(self, lines: int = 30) -> str:
        if self.control_plane is None:
            return ""
        return "\n".join(self.control_plane.log_tail(c, lines) for c in cpmod.COMPONENTS)


# --------------------------------------------------------------------------------------------
# local control plane sharing: every session using it holds a shared lock on users.lock


class _LocalSession:
    def __init__(self) -> None:
        self.cp = cpmod.ControlPlane()
        self.users_fh = None
        self.started = False

    def up(self) -> None:
        self.cp.dir.mkdir(parents=True, exist_ok=True)
        self.users_fh = open(self.cp.dir / "users.lock", "w")  # noqa: SIM115 - held for the session
        fcntl.flock(self.users_fh, fcntl.LOCK_SH)
        self.started = self.cp.up()
        if self.started:
            with self.cp.lock():
                self.cp.load()
                self.cp.state["started_by"] = f"pytest pid {os.getpid()}"
                self.cp.save()

    def down(self) -> None:
        if self.users_fh is None:
            return
        fcntl.flock(self.users_fh, fcntl.LOCK_UN)
        try:
            if _truthy("KUBETUNE_TEST_KEEP_CLUSTER"):
                return
            with self.cp.lock():
                self.cp.load()
                wanted = self.started or self.cp.state.get("stop_when_unused")
                if not wanted or not self.cp.state:
                    return
                try:
                    fcntl.flock(self.users_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # Another pytest session still uses it: the last one out stops it.
                    self.cp.state["stop_when_unused"] = True
                    self.cp.save()
                    return
                self.cp._down()
                cpmod.log(
                    "stopped the control plane (started by this or an earlier session; no session uses it now)"
                )
        finally:
            self.users_fh.close()
            self.users_fh = None


# --------------------------------------------------------------------------------------------
# kind (cannot run on the development machine: no Docker there)


def _kind_binary() -> str:
    kind = os.environ.get("KIND") or shutil.which("kind")
    if not kind:
        raise cpmod.ControlPlaneError(
            "KUBETUNE_TEST_CLUSTER=kind needs the kind binary (e.g. `go install sigs.k8s.io/kind@v0.31.0`, "
            "then put it on PATH or set KIND=/path/to/kind) and a working Docker"
        )
    return kind


def kind_up(name: str, kubeconfig: Path) -> bool:
    """Create (or reuse) the kind cluster NAME, write its kubeconfig; True when created here."""
    kind = _kind_binary()
    existing = subprocess.run(
        [kind, "get", "clusters"], check=True, capture_output=True, text=True
    ).stdout.split()
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    created = name not in existing
    if created:
        cmd = [kind, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "300s"]
        if image := os.environ.get("KUBETUNE_KIND_IMAGE"):
            cmd += ["--image", image]
        subprocess.run(cmd, check=True)
    else:
        subprocess.run(
            [kind, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)], check=True
        )
    return created


def advertise_fake_gpus(api) -> None:
    """kind nodes have no GPUs: advertise nvidia.com/gpu (extended resource, via the status
    subresource as Kubernetes documents) and the same GPU labels as the kwok nodes, so the
    operator's pods schedule the same way. Their containers run for real."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    gpu = cpmod.KWOK_NODES[0]
    for node in core.list_node().items:
        core.patch_node(
            node.metadata.name,
            {"metadata": {"labels": {k: v for k, v in gpu["labels"].items() if k.startswith("nvidia.com/")}}},
        )
        core.patch_node_status(
            node.metadata.name,
            {"status": {"capacity": {"nvidia.com/gpu": gpu["capacity"]["nvidia.com/gpu"]}}},
        )


def kind_down(name: str) -> None:
    subprocess.run([_kind_binary(), "delete", "cluster", "--name", name], check=False)


# --------------------------------------------------------------------------------------------
# hooks and fixtures


def _uses_cluster(item: pytest.Item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_cluster(item) or item.get_closest_marker("kwok"):
            item.add_marker(pytest.mark.cluster)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test runs (outside the per-test timeout)."""
    global _build_error
    if session.config.option.collectonly or not any(_uses_cluster(i) for i in session.items):
        return
    try:
        if flavor_from_env() == "local" and not cpmod.testbin_built():
            cpmod.ensure_testbin()
    except cpmod.ControlPlaneError as exc:
        _build_error = exc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _uses_cluster(item):
        cluster = item.funcargs.get(FIXTURE) if hasattr(item, "funcargs") else None
        if isinstance(cluster, KubeCluster) and cluster.control_plane is not None:
            report.sections.append(("control plane logs (tails)", cluster.log_tails()))
        elif cluster is None and flavor_from_env() == "local":
            cp = cpmod.ControlPlane()
            if cp.logs.exists():
                report.sections.append(
                    ("control plane logs (tails)", "\n".join(cp.log_tail(c, 30) for c in cpmod.COMPONENTS))
                )


def skip_reasons(reports) -> dict[str, int]:
    """How many of REPORTS (pytest's skipped reports) skipped for each reason."""
    reasons: dict[str, int] = {}
    for report in reports:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config):
    """One line right above pytest's last one: how many tests skipped, and why (the reasons, counted)."""
    yield
    reasons = skip_reasons(terminalreporter.stats.get("skipped", []))
    if reasons:
        counted = "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        terminalreporter.write_line(f"skipped {sum(reasons.values())}: {counted}", yellow=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kwok"):
        flavor = flavor_from_env()
        if flavor != "local" and not _truthy("KUBETUNE_TEST_KWOK"):
            pytest.skip(f"relies on kwok's fake pods; the {flavor} cluster runs real ones")


@pytest.fixture(scope="session")
def kube():
    if _build_error is not None:
        raise _build_error
    flavor = flavor_from_env()
    if flavor == "external":
        path = os.path.abspath(os.environ["KUBETUNE_TEST_KUBECONFIG"])
        if not os.path.exists(path):
            raise cpmod.ControlPlaneError(f"KUBETUNE_TEST_KUBECONFIG={path} does not exist")
        yield KubeCluster(path, "external", kwok=_truthy("KUBETUNE_TEST_KWOK"))
        return
    if flavor == "kind":
        name = os.environ.get("KUBETUNE_KIND_NAME", "kubetune-test")
        path = cpmod.CLUSTER_DIR / "kind-kubeconfig"
        created = kind_up(name, path)
        cluster = KubeCluster(str(path), "kind", kwok=False)
        advertise_fake_gpus(cluster.api)
        try:
            yield cluster
        finally:
            if created and not _truthy("KUBETUNE_TEST_KEEP_CLUSTER"):
                kind_down(name)
        return
    session = _LocalSession()
    try:
        session.up()
        yield KubeCluster(str(session.cp.kubeconfig), "local", kwok=True, control_plane=session.cp)
    finally:
        session.down()


@pytest.fixture
def namespace(kube: KubeCluster):
    name = kube.new_namespace()
    yield name
    kube.delete_namespace(name)


def kubeconfig_ca_and_server(kubeconfig: str) -> tuple[str, bytes | None]:
    """(server URL, CA bundle PEM or None) of a kubeconfig's current context, for building clients
    that authenticate differently (e.g. with a ServiceAccount token)."""
    import yaml

    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    ca = None
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return cluster["server"], ca


def token_client(kube: KubeCluster, token: str, tmp_dir: Path):
    """A kubernetes ApiClient that authenticates with a bearer TOKEN against KUBE's API server."""
    from kubernetes import client

    server, ca = kubeconfig_ca_and_server(kube.kubeconfig)
    conf = client.Configuration()
    conf.host = server
    # "BearerToken" is the client's auth setting name (older clients used "authorization").
    conf.api_key = {"BearerToken": token, "authorization": token}
    conf.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
    if ca is not None:
        ca_file = tmp_dir / "ca.crt"
        ca_file.write_bytes(ca)
        conf.ssl_ca_cert = str(ca_file)
    return client.ApiClient(conf)


__all__ = ["KubeCluster", "kube", "namespace", "token_client", "kubeconfig_ca_and_server"]
