"""A real node beside the kwok nodes: containerd + kubelet + kube-proxy + CoreDNS on this host.

    python -m tests.support.controlplane up --real-node     # the control plane, then this node
    python -m tests.support.realnode up|down|status          # this node on a running control plane

Node ``real-0`` (label ``kubetune.io/real-node=true``, taint ``kubetune.io/real-node=true:NoSchedule``,
so only pods that tolerate it land there) runs real containers: Debian's containerd 1.6 and runc, the
kubelet and kube-proxy of the control plane's version (hack/testbin.sh node), pods on a CNI bridge
(``kubetune0``, host-local addresses from ``POD_CIDR``), the ``kubernetes`` Service reaching the API
server through kube-proxy's rules, CoreDNS (a host process on the bridge's gateway address) serving
``cluster.local`` to the pods, and the StorageClass ``real-local`` with static ``local`` PersistentVolumes
on directories under ``.cluster/real-0/volumes/``.

Everything it makes lives in ``.cluster/real-0/`` (``node.json`` records PIDs, the containerd socket
and the node name: the contract for whoever loads images into its containerd), plus what cannot live
there: the bridge, kube-proxy's iptables chains, an ``/etc/hosts`` line (``real-0`` -> 127.0.0.1, so
the API server reaches the kubelet on loopback) and the kubelet's ``kubepods`` cgroups. ``down``
removes all of it; ``up`` first removes what a killed run left behind.

One real node per machine (the bridge, port 53 on its gateway and kube-proxy's chains are host-wide):
while one runs, its processes hold an exclusive ``flock`` on ``LOCK_PATH``.

Modules: this one starts, checks and stops the node; ``realnode_config`` says what it is (names, network,
the processes' configuration files); ``realnode_host`` handles host-wide state (mounts, cgroups, bridge,
iptables, /etc/hosts); ``realnode_pytest`` is the ``real_node`` fixture.

No image registry is reachable: the sandbox image (``PAUSE_IMAGE``, a static pause binary built by
hack/realnode.sh) and a test image (``TEST_IMAGE``: Debian's static busybox and ``apiprobe``, a static
in-cluster API client from hack/realnode/apiprobe) are packed here
(tests/support/imagetar.py) and imported into containerd at ``up``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import controlplane as cpmod
from tests.support import imagetar
from tests.support.ports import free_ports
from tests.support.realnode_config import (
    BRIDGE,
    CLUSTER_DOMAIN,
    CNI_NETWORK,
    CRI_NAMESPACE,
    GATEWAY,
    IMAGE_STORE,
    NODE_LABEL,
    NODE_NAME,
    NODE_SELECTOR,
    PAUSE_IMAGE,
    POD_CIDR,
    STORAGE_CLASS,
    TAINT,
    TEST_APPLETS,
    TEST_IMAGE,
    TOLERATION,
    cni_config,
    containerd_config,
    corefile,
    issue_client_cert,
    kube_proxy_config,
    kubelet_config,
    local_pv,
    storage_class,
)
from tests.support.realnode_host import (
    CNI_CACHE,
    LOCK_PATH,
    LockHolder,
    allow_forwarding,
    bridge_exists,
    lock_holders,
    make_bridge,
    mounts_under,
    pod_cgroup_pids,
    remove_kubelet_chains,
    remove_pod_cgroups,
    run,
    set_hosts_entry,
    unmount_all,
)

# The names tests and other helpers use, from here: what the node is and how pods get there.
__all__ = [
    "BRIDGE", "CLUSTER_DOMAIN", "GATEWAY", "NODE_LABEL", "NODE_NAME", "NODE_SELECTOR", "PAUSE_IMAGE",
    "POD_CIDR", "PROCESSES", "STORAGE_CLASS", "TAINT", "TEST_IMAGE", "TOLERATION", "RealNode",
    "RealNodeUnavailable", "ensure_built", "host_problem",
]  # fmt: skip

INITIAL_VOLUMES = 3
SCRIPT = cpmod.REPO / "hack" / "realnode.sh"

# Started in this order; stopped in the reverse (the kubelet first, so that it restarts nothing).
PROCESSES = ("containerd", "coredns", "kube-proxy", "kubelet")
START_TIMEOUT = float(os.environ.get("KUBETUNE_REAL_NODE_START_TIMEOUT", "180"))


class NodeProcessExited(cpmod.ControlPlaneError):
    """A process of the node exited while the node was starting."""


class RealNodeUnavailable(cpmod.ControlPlaneError):
    """This host cannot run the real node now (the reason says why): tests skip, saying so."""


def log(msg: str) -> None:
    print(f"[realnode] {msg}", file=sys.stderr, flush=True)


def host_problem() -> str | None:
    """Why this host cannot run containers, or None (hack/realnode.sh can-run: root, kernel)."""
    proc = subprocess.run(["bash", str(SCRIPT), "can-run"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return proc.stdout.strip() or proc.stderr.strip() or "hack/realnode.sh can-run failed"


def _script(*args: str) -> dict[str, Path]:
    proc = subprocess.run(["bash", str(SCRIPT), *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise cpmod.ControlPlaneError(
            f"`hack/realnode.sh {' '.join(args)}` failed with exit code {proc.returncode} (its log is above)"
        )
    return {
        k.lower(): Path(v) for k, sep, v in (line.partition("=") for line in proc.stdout.splitlines()) if sep
    }


def ensure_built() -> dict[str, Path]:
    """Install the Debian packages and build kubelet, kube-proxy, coredns and pause when missing."""
    if problem := host_problem():
        raise RealNodeUnavailable(f"this host cannot run containers: {problem}")
    if subprocess.run(["bash", str(SCRIPT), "check"], capture_output=True).returncode != 0:
        log("installing and building the real node's packages and binaries (hack/realnode.sh)")
        try:
            _script("install")
        except cpmod.ControlPlaneError as exc:
            # A host without Debian's packages (or apt) cannot run it either; the builds below are ours.
            raise RealNodeUnavailable(f"its Debian packages could not be installed: {exc}") from None
    return _script("build")


# --------------------------------------------------------------------------------------------
# the node


@dataclass
class RealNode:
    cp: cpmod.ControlPlane

    @property
    def dir(self) -> Path:
        return self.cp.dir / NODE_NAME

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def info_file(self) -> Path:
        return self.dir / "node.json"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def volumes(self) -> Path:
        return self.dir / "volumes"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, info: dict) -> None:
        cpmod._write(self.info_file, json.dumps(info, indent=2), 0o644)

    def mark(self, **fields: Any) -> None:
        """Record FIELDS in node.json (e.g. who started the node, for the pytest fixture's teardown)."""
        info = self.info()
        if info:
            info.update(fields)
            self._save(info)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return f"---- {self.log_file(name)} (last {lines} lines) ----\n" + "\n".join(text)

    def note_exit(self, name: str, pid: int, status: str, when: str) -> None:
        """Record how a process of the node ended (logs/exits.log, and stderr)."""
        line = f"{dt.datetime.now(dt.UTC).isoformat()} {name} pid {pid}: {status} ({when})"
        log(line)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "exits.log", "a") as exits:
            exits.write(line + "\n")

    # health ----------------------------------------------------------------------------
    def processes_alive(self, info: dict | None = None) -> dict[str, bool]:
        procs = (info if info is not None else self.info()).get("processes", {})
        return {
            name: name in procs
            and cpmod.pid_alive(procs[name]["pid"], procs[name]["argv"][0], procs[name].get("start"))
            for name in PROCESSES
        }

    def node_ready(self, since: dt.datetime | None = None) -> bool:
        """The Node's Ready condition is True (and, with SINCE, was reported at or after it: a kubelet
        killed a moment ago leaves a Ready status behind for a while)."""
        try:
            node = self.cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        except (urllib.error.URLError, OSError):
            return False
        for c in node.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                if since is None:
                    return True
                heartbeat = dt.datetime.fromisoformat(c["lastHeartbeatTime"].replace("Z", "+00:00"))
                return heartbeat >= since.replace(microsecond=0)
        return False

    def healthy(self) -> bool:
        info = self.info()
        return (
            bool(info)
            and info.get("apiserver") == self.cp.server
            and all(self.processes_alive(info).values())
            and self.node_ready()
        )

    # lock ------------------------------------------------------------------------------
    def _lock_owner(self) -> str:
        owner = Path(f"{LOCK_PATH}.owner")
        return owner.read_text().strip() if owner.exists() else "?"

    def _take_machine_lock(self) -> int:
        """The machine-wide lock, as an fd the node's processes inherit (so it is held exactly while
        any of them runs, and released by the kernel when a killed run's last process is gone)."""
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                owner = self._lock_owner()
                if owner != str(self.dir.resolve()):
                    os.close(fd)
                    raise RealNodeUnavailable(
                        f"another real node runs on this machine (state in {owner}; lock {LOCK_PATH}); "
                        "only one may run at a time: stop it with `python -m tests.support.controlplane down` "
                        "in its checkout"
                    ) from None
                # Ours: leftovers of a killed run still hold it.
                self._cleanup(self.info())
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise cpmod.ControlPlaneError(
                        f"{LOCK_PATH} stays locked after cleaning up {self.dir}"
                    ) from None
                time.sleep(0.5)
        Path(f"{LOCK_PATH}.owner").write_text(f"{self.dir.resolve()}\n")
        return fd

    # start -----------------------------------------------------------------------------
    def up(self) -> bool:
        """Start the node unless a healthy one runs on this control plane. True when started here."""
        if not self.cp.state and not self.cp.load():
            raise cpmod.ControlPlaneError("no control plane runs: start it first (controlplane up)")
        if self.healthy():
            log(f"reusing the running real node {NODE_NAME} (containerd {self.socket})")
            return False
        bins = ensure_built()
        lock_fd = self._take_machine_lock()
        try:
            for attempt in (1, 2):
                try:
                    self._cleanup(self.info(), lock_fd)
                    self.cp.enable_real_node()
                    self._start(bins, lock_fd)
                    break
                except NodeProcessExited as e:
                    # Seen once in a full CI session (not reproduced alone): the kubelet gone 0.2 s after
                    # its start, without a line of log. One more start, from a clean host, with the first
                    # failure in the log.
                    if attempt == 2:
                        raise
                    log(f"real node start failed, starting once more: {e}")
        except BaseException:
            log("real node start failed: removing what was started")
            self._cleanup(self.info(), lock_fd)
            raise
        finally:
            os.close(lock_fd)
        return True

    def _spawn(self, info: dict, name: str, argv: list[str], lock_fd: int) -> None:
        proc = cpmod.spawn(argv, self.log_file(name), self.dir, pass_fds=(lock_fd,))
        info["processes"][name] = {"pid": proc.pid, "start": cpmod.proc_start_time(proc.pid), "argv": argv}
        self._save(info)

    def _wait(self, info: dict, what: str, check, deadline: float) -> None:
        while time.monotonic() < deadline:
            if check():
                return
            for name, ok in self.processes_alive(info).items():
                if name in info["processes"] and not ok:
                    pid = info["processes"][name]["pid"]
                    status = cpmod.exit_status(pid)
                    self.note_exit(name, pid, status, f"while waiting for {what}")
                    sent = cpmod.signals_sent_to(pid)
                    raise NodeProcessExited(
                        f"{name} (pid {pid}) exited while waiting for {what}: {status}; signals the test bed sent "
                        f"it: {sent or 'none'}\n" + self.log_tail(name)
                    )
            time.sleep(0.2)
        raise cpmod.ControlPlaneError(
            f"timed out waiting for {what}\n" + "\n".join(self.log_tail(n) for n in info["processes"])
        )

    def _start(self, bins: dict[str, Path], lock_fd: int) -> None:
        t0 = time.monotonic()
        deadline = t0 + START_TIMEOUT
        d, pki = self.dir, self.cp.pki
        if self.logs.exists():
            prev = d / "logs.previous"
            shutil.rmtree(prev, ignore_errors=True)
            self.logs.rename(prev)
        for sub in ("logs", "volumes", "pod-logs", "kubelet", "cni/net.d", "cni/ipam", "containerd"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        IMAGE_STORE.mkdir(parents=True, exist_ok=True)
        kubelet_port, kubelet_healthz, proxy_healthz, proxy_metrics, dns_ready = free_ports(5)
        info: dict[str, Any] = {
            "node_name": NODE_NAME,
            "containerd_socket": str(self.socket),
            "cri_namespace": CRI_NAMESPACE,
            "apiserver": self.cp.server,
            "pod_cidr": POD_CIDR,
            "gateway": GATEWAY,
            "bridge": BRIDGE,
            "cluster_dns": GATEWAY,
            "storage_class": STORAGE_CLASS,
            "images": {"pause": PAUSE_IMAGE, "test": TEST_IMAGE},
            "binaries": {k: str(v) for k, v in bins.items()},
            "ports": {
                "kubelet": kubelet_port,
                "kubelet_healthz": kubelet_healthz,
                "coredns_ready": dns_ready,
            },
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "processes": {},
        }
        self._save(info)

        issue_client_cert(pki, "kubelet-real-0", f"system:node:{NODE_NAME}", ("system:nodes",))
        issue_client_cert(pki, "kube-proxy", "system:kube-proxy")
        cpmod.write_kubeconfig(d / "kubelet.kubeconfig", self.cp.server, pki, "kubelet-real-0")
        cpmod.write_kubeconfig(d / "kube-proxy.kubeconfig", self.cp.server, pki, "kube-proxy")
        cpmod._write(d / "containerd.toml", containerd_config(d, self.socket, d / "cni" / "net.d"), 0o644)
        cpmod._write(
            d / "cni" / "net.d" / "10-kubetune.conflist",
            json.dumps(cni_config(d / "cni" / "ipam"), indent=2),
            0o644,
        )
        cpmod._write(
            d / "kubelet.yaml",
            yaml.safe_dump(kubelet_config(d, self.socket, pki, kubelet_port, kubelet_healthz)),
            0o644,
        )
        cpmod._write(
            d / "kube-proxy.yaml",
            yaml.safe_dump(kube_proxy_config(d / "kube-proxy.kubeconfig", proxy_healthz, proxy_metrics)),
            0o644,
        )
        cpmod._write(d / "Corefile", corefile(self.cp.kubeconfig, dns_ready), 0o644)
        cpmod._write(d / "resolv.conf", f"nameserver {GATEWAY}\n", 0o644)

        make_bridge()
        set_hosts_entry(True)

        self._spawn(info, "containerd", ["/usr/bin/containerd", f"--config={d / 'containerd.toml'}"], lock_fd)
        self._wait(
            info, "containerd's socket", lambda: self._ctr("version", check=False).returncode == 0, deadline
        )
        self.import_images(bins)

        coredns = str(bins["coredns"])
        self._spawn(info, "coredns", [coredns, "-conf", str(d / "Corefile")], lock_fd)
        kube_proxy = str(bins["node"] / "kube-proxy")
        self._spawn(info, "kube-proxy", [kube_proxy, f"--config={d / 'kube-proxy.yaml'}"], lock_fd)
        kubelet = str(bins["node"] / "kubelet")
        kubelet_started = dt.datetime.now(dt.UTC)
        self._spawn(
            info,
            "kubelet",
            [
                kubelet,
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                "--v=1",
            ],
            lock_fd,
        )
        self._wait(info, f"node {NODE_NAME} Ready", lambda: self.node_ready(since=kubelet_started), deadline)
        self._wait(
            info, "CoreDNS /ready", lambda: self.cp._get_ok(f"http://127.0.0.1:{dns_ready}/ready"), deadline
        )
        self._wait(
            info,
            "kube-proxy /healthz",
            lambda: self.cp._get_ok(f"http://127.0.0.1:{proxy_healthz}/healthz"),
            deadline,
        )
        self._ensure_storage_class()
        for _ in range(INITIAL_VOLUMES):
            self.new_volume()
        info["ready_seconds"] = round(time.monotonic() - t0, 2)
        self._save(info)
        log(f"real node {NODE_NAME} Ready in {info['ready_seconds']} s; containerd {self.socket}")

    # containerd ------------------------------------------------------------------------
    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ctr", f"--address={self.socket}", f"--namespace={CRI_NAMESPACE}", *args, check=check)

    def import_image(self, archive: Path) -> None:
        """Import an image archive (docker save / OCI) into the node's containerd, for the kubelet."""
        self._ctr("images", "import", "--platform=linux/amd64", str(archive))

    def images(self) -> list[str]:
        return self._ctr("images", "ls", "-q").stdout.split()

    def import_images(self, bins: dict[str, Path]) -> None:
        images = self.dir / "images"
        imagetar.write_archive(
            imagetar.Image("kubetune/pause:dev", [imagetar.Entry("pause", source=bins["pause"])], ["/pause"]),
            images / "pause.tar",
        )
        busybox = Path(shutil.which("busybox") or "/bin/busybox")
        imagetar.write_archive(
            imagetar.Image(
                "kubetune/node-test:dev",
                [
                    *imagetar.busybox_entries(busybox, TEST_APPLETS),
                    imagetar.Entry("bin/apiprobe", source=bins["apiprobe"]),
                ],
                ["/bin/sh"],
                ["-c", "true"],
            ),
            images / "node-test.tar",
        )
        for archive in ("pause.tar", "node-test.tar"):
            self.import_image(images / archive)
        missing = {PAUSE_IMAGE, TEST_IMAGE} - set(self.images())
        if missing:
            raise cpmod.ControlPlaneError(f"images {sorted(missing)} missing after import: {self.images()}")

    # storage ---------------------------------------------------------------------------
    def _ensure_storage_class(self) -> None:
        try:
            self.cp.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class())
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def new_volume(self, size: str = "10Gi") -> str:
        """A fresh static `local` PersistentVolume of STORAGE_CLASS on a new directory under volumes/
        (a claim binds one for good: Retain, no provisioner). Returns the PV's name."""
        self.volumes.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            name = f"real-local-{os.urandom(3).hex()}"
            path = self.volumes / name
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        path.chmod(0o777)
        self.cp.request("POST", "/api/v1/persistentvolumes", local_pv(name, path, size))
        return name

    def volume_dir(self, pv_name: str) -> Path:
        return self.volumes / pv_name

    # stop ------------------------------------------------------------------------------
    def down(self) -> None:
        info = self.info()
        if not info and not self.dir.exists():
            return
        self._cleanup(info)
        # The Node and its volumes would stay behind in a control plane that keeps running.
        if self.cp.state and self.cp.apiserver_ready():
            self._delete_api_objects()
        # The claims' data: their PersistentVolumes are gone (or go with the control plane).
        if self.volumes.exists() and not mounts_under(self.volumes):
            shutil.rmtree(self.volumes, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.info_file.unlink()
        log(f"real node {NODE_NAME} stopped")

    def _delete_api_objects(self) -> None:
        with contextlib.suppress(urllib.error.URLError, OSError):
            self.cp.request("DELETE", f"/api/v1/nodes/{NODE_NAME}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            self.cp.request(
                "DELETE",
                "/api/v1/persistentvolumes?labelSelector="
                + urllib.parse.quote(f"{NODE_LABEL[0]}={NODE_LABEL[1]}"),
            )

    def _try_machine_lock(self) -> int | None:
        """The machine lock's fd when it is free (no real node runs anywhere), else None."""
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None

    def _cleanup(self, info: dict, lock_fd: int | None = None) -> None:
        """Remove everything a run (maybe a killed one) left: processes, containers, mounts, the bridge,
        kube-proxy's chains, the hosts line, the kubepods cgroups. Idempotent. The host-wide parts only
        while no other checkout's real node runs (the machine lock is ours or free)."""
        procs = info.get("processes", {})
        for name in reversed(PROCESSES):
            if name in procs:
                p = procs[name]
                status = cpmod.stop_pid(
                    p["pid"], p["argv"][0], p.get("start"), why=f"real node cleanup: its {name}"
                )
                self.note_exit(name, p["pid"], status, "cleanup")
        # Processes of this node whose PIDs were never recorded (a start killed half-way): ours are
        # started in this directory or name this node's containerd socket (its shims).
        self._stop_strays()
        fd = lock_fd if lock_fd is not None else self._try_machine_lock()
        if fd is None and self._lock_owner() == str(self.dir.resolve()):
            # Ours, yet held: by a process of this node that nothing above knew (the lock is inherited by
            # the node's processes and their children). Only processes of this node, each stopped only while
            # it is the process that was listed (its binary and start time): a PID freed and reused
            # meanwhile is left alone, and so is any other holder (another checkout's process trying the lock).
            for holder in lock_holders():
                if not self._belongs_here(holder):
                    log(f"left alone: pid {holder.pid} ({holder.argv0}, cwd {holder.cwd}) holds {LOCK_PATH}")
                    continue
                log(
                    f"stopping pid {holder.pid} ({holder.argv0}), a leftover of this node still holding {LOCK_PATH}"
                )
                cpmod.stop_pid(holder.pid, holder.argv0, holder.start, grace=5.0,
                               why=f"real node cleanup: a leftover holding {LOCK_PATH}")  # fmt: skip
            fd = self._try_machine_lock()
        try:
            if fd is not None:
                # The containers (only one real node runs, so every kubepods process is this node's):
                # the kubelet is gone, nothing restarts them.
                for pid in pod_cgroup_pids():
                    cpmod.send_signal(
                        pid, signal.SIGKILL, "real node cleanup: a container left in the kubepods cgroups"
                    )
                deadline = time.monotonic() + 10
                while pod_cgroup_pids() and time.monotonic() < deadline:
                    time.sleep(0.1)
            if self.dir.exists():
                failed = unmount_all(self.dir)
                if failed:
                    raise cpmod.ControlPlaneError("could not unmount: " + "; ".join(failed))
                for sub in ("containerd/state", "kubelet", "pod-logs", "cni/ipam"):
                    if not mounts_under(self.dir / sub):
                        shutil.rmtree(self.dir / sub, ignore_errors=True)
                for sock in (self.socket, Path(f"{self.socket}.ttrpc")):
                    with contextlib.suppress(OSError):
                        sock.unlink()
            if fd is None:
                log("another real node holds the machine lock: left the bridge, iptables and cgroups alone")
                return
            if bridge_exists():
                run("ip", "link", "del", BRIDGE, check=False)
            allow_forwarding(False)
            node_bin = info.get("binaries", {}).get("node")
            if node_bin and Path(node_bin, "kube-proxy").exists():
                # kube-proxy's own cleanup of its KUBE-* chains (iptables and ip6tables).
                run(str(Path(node_bin, "kube-proxy")), "--cleanup", check=False)
            remove_kubelet_chains()
            for cached in CNI_CACHE.glob(f"{CNI_NETWORK}-*") if CNI_CACHE.is_dir() else ():
                with contextlib.suppress(OSError):
                    cached.unlink()
            set_hosts_entry(False)
            remove_pod_cgroups()
        finally:
            if lock_fd is None and fd is not None:
                os.close(fd)

    def _belongs_here(self, holder: LockHolder) -> bool:
        """A lock holder of this node: started in its folder (the node's processes and their children, shims
        in their bundles under it) or naming its containerd socket."""
        here = str(self.dir.resolve())
        return holder.cwd == here or holder.cwd.startswith(here + "/") or str(self.socket) in holder.argv

    def _stop_strays(self) -> None:
        here = str(self.dir.resolve())
        sock = str(self.socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
                argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            if not argv:
                continue
            ours = cwd == here and Path(argv[0]).name in ("containerd", "coredns", "kube-proxy", "kubelet")
            shim = Path(argv[0]).name.startswith("containerd-shim") and sock in argv
            if ours or shim:
                cpmod.stop_pid(int(proc.name), argv[0], cpmod.proc_start_time(int(proc.name)), grace=5.0,
                               why="real node cleanup: a process of this node whose PID was never recorded")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.realnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cmd", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cp = cpmod.ControlPlane()
    try:
        with cp.lock():
            cp.load()
            node = RealNode(cp)
            if args.cmd == "up":
                node.up()
                print(node.info_file)
            elif args.cmd == "down":
                node.down()
            else:
                info = node.info()
                for name, ok in node.processes_alive(info).items():
                    print(f"{name:12} {'running' if ok else 'NOT RUNNING'}")
                ready = node.node_ready() if cp.state else False
                print(f"{'node':12} {NODE_NAME} {'Ready' if ready else 'NOT READY'}")
                return 0 if node.healthy() else 1
    except cpmod.ControlPlaneError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: realnode and controlplane import each other
    # by name, and an exception class of the __main__ copy would not be the one they raise.
    from tests.support.realnode import main as _main

    sys.exit(_main())
