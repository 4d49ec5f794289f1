"""The real test node's host-wide state (tests/support/realnode.py): mounts under its folder, the kubepods
cgroups, the /etc/hosts line, the bridge and its FORWARD rules, the kubelet's iptables chains, and the
machine lock's holders. Thin wrappers around the kernel and the ip/iptables tools, each idempotent, so
that `down` (and `up` after a killed run) can call them whatever is left."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import controlplane as cpmod
from tests.support.realnode_config import BRIDGE, GATEWAY, NODE_NAME, POD_CIDR

LOCK_PATH = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "kubetune-real-node.lock"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# kubetune real node"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_CACHE = Path("/var/lib/cni/results")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ROOT, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def unmount_all(root: Path) -> list[str]:
    """Lazily unmount everything under ROOT (containerd's rootfs and netns mounts, the kubelet's
    volumes); return what could not be unmounted."""
    failed: list[str] = []
    for _ in range(5):
        points = mounts_under(root)
        if not points:
            return []
        failed = []
        for point in points:
            if _libc.umount2(point.encode(), MNT_DETACH) != 0:
                failed.append(f"{point}: {os.strerror(ctypes.get_errno())}")
    return failed


def pod_cgroup_pids() -> set[int]:
    """PIDs of processes in the kubelet's kubepods cgroups (the real node's containers)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if re.search(r"^[^:]*:[^:]*:/kubepods", (proc / "cgroup").read_text(), re.M):
                pids.add(int(proc.name))
    pids.discard(os.getpid())
    return pids


def remove_pod_cgroups() -> None:
    """rmdir the kubelet's (empty, once its processes are gone) kubepods cgroups, deepest first."""
    for controller in CGROUP_ROOT.iterdir():
        for top in (controller / "kubepods", controller / "kubepods.slice"):
            if not top.is_dir():
                continue
            for path in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def set_hosts_entry(present: bool, hosts: Path = HOSTS_FILE) -> None:
    """`127.0.0.1 real-0` in /etc/hosts (marked, so it is removed exactly): the API server resolves the
    node's Hostname address to loopback, where the kubelet listens."""
    try:
        lines = hosts.read_text().splitlines()
    except OSError:
        lines = []
    kept = [line for line in lines if not line.rstrip().endswith(HOSTS_MARK)]
    if present:
        kept.append(f"127.0.0.1 {NODE_NAME} {HOSTS_MARK}")
    if kept != lines:
        # Written in place: /etc/hosts is often a bind mount that cannot be replaced by a rename.
        hosts.write_text("\n".join(kept) + "\n")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise cpmod.ControlPlaneError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# Chains the kubelet itself makes (kube-proxy --cleanup removes kube-proxy's): its canaries, the
# iptables-mode hint, and KUBE-FIREWALL (drops packets from outside to 127.0.0.0/8) hooked into INPUT/OUTPUT.
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def remove_kubelet_chains() -> None:
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for hook in ("INPUT", "OUTPUT"):
            for _ in range(10):  # one rule per earlier kubelet start at most
                if run(tool, "-w", "-t", "filter", "-D", hook, "-j", "KUBE-FIREWALL", check=False).returncode:
                    break
        for table in ("filter", "nat", "mangle"):
            for chain in KUBELET_CHAINS:
                run(tool, "-w", "-t", table, "-F", chain, check=False)
                run(tool, "-w", "-t", table, "-X", chain, check=False)


# Pod traffic through the bridge is forwarded even where the FORWARD policy is DROP (Docker sets it so
# when it manages iptables): the pod -> Service -> pod path is routed, and with br_netfilter even bridged
# traffic between two pods passes FORWARD.
FORWARD_COMMENT = "kubetune real node"


def _forward_rule(direction: str) -> list[str]:
    return ["FORWARD", direction, BRIDGE, "-m", "comment", "--comment", FORWARD_COMMENT, "-j", "ACCEPT"]


def allow_forwarding(allow: bool) -> None:
    for direction in ("-i", "-o"):
        rule = _forward_rule(direction)
        present = run("iptables", "-w", "-C", *rule, check=False).returncode == 0
        if allow and not present:
            run("iptables", "-w", "-I", *rule)
        elif not allow:
            for _ in range(10):  # once per earlier run at most
                if run("iptables", "-w", "-D", *rule, check=False).returncode:
                    break


@dataclass(frozen=True)
class LockHolder:
    """A process with the machine lock file open, as listed: its identity (PID and start time), command, cwd."""

    pid: int
    start: int | None
    argv0: str
    argv: tuple[str, ...]
    cwd: str


def lock_holders() -> list[LockHolder]:
    """The processes with the machine lock file open (the real node's processes inherit it)."""
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(LOCK_PATH) for fd in (proc / "fd").iterdir()):
                pid = int(proc.name)
                argv = tuple(
                    a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a
                )
                holders.append(
                    LockHolder(
                        pid,
                        cpmod.proc_start_time(pid),
                        argv[0] if argv else "",
                        argv,
                        os.readlink(proc / "cwd"),
                    )
                )
    return holders


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def make_bridge() -> None:
    """The CNI bridge, made before the kubelet (its --node-ip must exist) and CoreDNS (binds to it)."""
    if not bridge_exists():
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    if GATEWAY not in run("ip", "-4", "addr", "show", "dev", BRIDGE).stdout:
        run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    allow_forwarding(True)
