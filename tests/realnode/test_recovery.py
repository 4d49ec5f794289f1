"""The real node after a crash: `kill -9` of containerd, its shims, the kubelet, kube-proxy and CoreDNS
with a pod running leaves containers, mounts and a machine lock holder behind; the next `up` clears them
and the node runs pods again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from kubernetes import client

from tests.realnode.test_node import pod_manifest, run_to_completion
from tests.support import controlplane as cpmod
from tests.support import realnode, realnode_host
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.cluster]


def shim_pids(socket: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                argv
                and Path(argv[0].decode()).name.startswith("containerd-shim")
                and str(socket).encode() in argv
            ):
                pids.append(int(proc.name))
    return pids


@pytest.mark.timeout(240)
def test_up_after_kill_9_clears_the_leftovers_and_runs_pods_again(real_node, kube, namespace):
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_pod(namespace, pod_manifest("survivor", "sleep 3600"))
    wait_for(
        lambda: core.read_namespaced_pod("survivor", namespace).status.phase == "Running",
        90,
        0.5,
        "pod survivor Running",
    )

    containers = {pid: cpmod.proc_start_time(pid) for pid in realnode_host.pod_cgroup_pids()}
    assert containers, "no container process found in the kubepods cgroups"
    old = real_node.info()["processes"]
    shims = shim_pids(real_node.socket)
    assert shims
    for pid in [p["pid"] for p in old.values()] + shims:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not any(real_node.processes_alive(real_node.info()).values()),
        10,
        0.5,
        "the node's processes to die",
    )
    # What the crash left: the containers (reparented), their mounts.
    assert any(cpmod.pid_alive(pid, start=start) for pid, start in containers.items())
    assert realnode_host.mounts_under(real_node.dir)

    cp = kube.control_plane
    with cp.lock():
        cp.load()
        assert real_node.up() is True

    assert not any(cpmod.pid_alive(pid, start=start) for pid, start in containers.items())
    new = real_node.info()["processes"]
    assert all(real_node.processes_alive(real_node.info()).values())
    assert {name: p["pid"] for name, p in new.items()}.keys() == set(realnode.PROCESSES)
    assert not {p["pid"] for p in new.values()} & {p["pid"] for p in old.values()}
    assert real_node.node_ready()

    pod, log = run_to_completion(core, namespace, pod_manifest("after-crash", "echo alive"))
    assert log.strip() == "alive" and pod.spec.node_name == realnode.NODE_NAME
