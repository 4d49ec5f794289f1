"""pytest plugin: the ``real_node`` fixture (registered in tests/conftest.py).

``real_node`` (session scope) -> :class:`tests.support.realnode.RealNode` on the session's local control
plane (``kube``): node ``real-0`` running real containers (containerd, kubelet, kube-proxy, CoreDNS; see
tests/support/realnode.py). Reused when one already runs on that control plane (``controlplane up
--real-node``); otherwise started here and stopped at the end of the session (unless
``KUBETUNE_TEST_KEEP_CLUSTER=1``; with several sessions on it, the last one out stops it). A control plane the session starts gets the real node's API server flags
from the start; one that already ran without them is restarted once with them.

Pods go there with ``tolerations: [realnode.TOLERATION]`` and ``nodeSelector: realnode.NODE_SELECTOR``;
``real_node.new_volume()`` adds a static PersistentVolume of StorageClass ``real-local`` (one claim each),
``real_node.volume_dir(pv)`` is its directory on the host, ``real_node.socket`` containerd's socket (to
import images: ``real_node.import_image(archive)``).

Skipped, with the reason, on kind and external clusters and on a host that cannot run containers (not root,
no namespaces, no overlayfs...: ``hack/realnode.sh can-run``), and only there. On a host that can, a node
that cannot start is an error naming the reason (its Debian packages could not be installed, another
checkout's real node holds the machine, a process of the node exited): never a silent skip, so that
`make test` fails there. The packages and binaries (hack/realnode.sh) are installed and built right after
collection when a selected test uses the fixture, outside the per-test timeout.
"""

from __future__ import annotations

import fcntl
import os

import pytest

from tests.support import controlplane as cpmod
from tests.support import realnode
from tests.support.cluster import flavor_from_env

FIXTURE = "real_node"
_prepare_error: Exception | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _prepare_error
    if session.config.option.collectonly or flavor_from_env() != "local":
        return
    if not any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if realnode.host_problem() is not None:
        return  # the fixture skips, saying why
    try:
        realnode.ensure_built()
    except cpmod.ControlPlaneError as exc:
        _prepare_error = exc
        return
    # The session's control plane, if it starts one, serves the real node's pods from the start.
    cpmod.START_FOR_REAL_NODE = True


@pytest.fixture(scope="session")
def real_node(kube):
    if kube.flavor != "local" or kube.control_plane is None:
        pytest.skip(
            f"the real node joins the local control plane only (this session uses a {kube.flavor} cluster)"
        )
    if problem := realnode.host_problem():
        pytest.skip(f"this host cannot run containers, so no real node: {problem}")
    if _prepare_error is not None:
        pytest.fail(
            f"this host can run containers, but the real node cannot start: {_prepare_error}", pytrace=False
        )
    cp = kube.control_plane
    node = realnode.RealNode(cp)
    # Every session using the node holds a shared lock on users.lock: the last one out stops it (when the
    # node was started by a session, not by `controlplane up --real-node`).
    node.dir.mkdir(parents=True, exist_ok=True)
    users = open(node.dir / "users.lock", "w")  # noqa: SIM115 - held for the session
    fcntl.flock(users, fcntl.LOCK_SH)
    started = False
    try:
        try:
            with cp.lock():
                cp.load()
                started = node.up()
        except realnode.RealNodeUnavailable as exc:
            pytest.fail(f"this host can run containers, but the real node cannot start: {exc}", pytrace=False)
        yield node
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            if os.environ.get("KUBETUNE_TEST_KEEP_CLUSTER", "").strip().lower() not in ("1", "true", "yes"):
                with cp.lock():
                    cp.load()
                    if started or node.info().get("stop_when_unused"):
                        try:
                            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            node.down()
                        except BlockingIOError:
                            node.mark(stop_when_unused=True)  # another session still uses it
        finally:
            users.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    node = item.funcargs.get(FIXTURE) if report.failed and hasattr(item, "funcargs") else None
    if isinstance(node, realnode.RealNode):
        report.sections.append(
            ("real node logs (tails)", "\n".join(node.log_tail(name, 30) for name in realnode.PROCESSES))
        )
