"""A real, node-less Kubernetes control plane on loopback for the test suite.

    python -m tests.support.controlplane up        # start (or reuse a healthy one), print the kubeconfig path
    python -m tests.support.controlplane status    # exit 0 when a healthy cluster is up
    python -m tests.support.controlplane down      # stop every process by its PID, drop etcd's data
    python -m tests.support.controlplane restart kube-apiserver   # restart one component in place

Components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, from the pinned
builds of ``hack/testbin.sh`` (cached in ~/.cache/kubetune/testbin, built there when missing).
Everything lives in ``.cluster/`` of the repository (git-ignored):

    .cluster/kubeconfig          admin kubeconfig (client certificate in system:masters)
    .cluster/state.json          ports, argv and PIDs of the components
    .cluster/pids/<name>.pid     one PID per component
    .cluster/logs/<name>.log     each component's stdout+stderr
    .cluster/pki/                CA, serving and client certificates, service-account keys

etcd's data goes to a fresh temporary directory per ``up`` (removed by ``down``).

kwok registers fake nodes (``KWOK_NODES`` below: 8 ``nvidia.com/gpu`` each). Fake pods go
Pending -> Running at once; pods owned by a Job then complete (exit 0). Labels on a pod steer it:

    kwok.kubetune.io/outcome: fail       the pod fails (phase Failed, containers terminated, exit 1)
    kwok.kubetune.io/outcome: run        the pod stays Running until deleted (never completes)
    kwok.kubetune.io/exit-code: "137"    exit code of a failing pod (default 1)
    kwok.kubetune.io/run-duration: 5s    how long the pod runs before completing or failing (a Go duration)

The last two may also be annotations. A pod being deleted is stopped like a kubelet does it: its
containers exit 143 after the grace period or TERMINATE_AFTER_SECONDS (whichever is shorter), it goes
Failed keeping its conditions (an eviction's DisruptionTarget), and is deleted once terminal. PersistentVolumeClaims of the default StorageClass
(kwok-volume) are provisioned and Bound at once by kwok's volume stages.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.ports import free_port, free_ports

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("KUBETUNE_CLUSTER_DIR", REPO / ".cluster"))
TESTBIN_SCRIPT = REPO / "hack" / "testbin.sh"

# Order matters: started in this order, stopped in the reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
PORT_NAMES = ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok")

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The real node's bridge address (tests/support/realnode.py GATEWAY): with a real node the API server
# listens beyond loopback and advertises this address, so its pods reach it through the kubernetes Service.
REAL_NODE_GATEWAY = "10.245.0.1"

OUTCOME_LABEL = "kwok.kubetune.io/outcome"
EXIT_CODE_KEY = "kwok.kubetune.io/exit-code"
RUN_DURATION_KEY = "kwok.kubetune.io/run-duration"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KWOK_NODES = [
    {
        "name": f"kwok-gpu-{i}",
        "labels": {
            "type": "kwok",
            "node.kubernetes.io/instance-type": "kwok-8xh100",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": GPU_PRODUCT,
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.memory": "81559",
            "topology.kubernetes.io/zone": f"kwok-zone-{i % 2}",
        },
        "capacity": {
            "cpu": "96",
            "memory": "1024Gi",
            "pods": "110",
            "nvidia.com/gpu": "8",
            "ephemeral-storage": "2Ti",
        },
    }
    for i in range(2)
]

START_TIMEOUT = float(os.environ.get("KUBETUNE_CLUSTER_START_TIMEOUT", "120"))
# Set by the real_node pytest plugin when the session's tests will want the real node: a control plane this
# process starts then gets the real node's API server flags at once, instead of a restart later.
START_FOR_REAL_NODE = False


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def log(msg: str) -> None:
    print(f"[controlplane] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class Testbin:
    kubernetes: Path
    etcd: Path
    kwok: Path
    helm: Path

    def binary(self, component: str) -> Path:
        return {
            "etcd": self.etcd / "etcd",
            "kube-apiserver": self.kubernetes / "kube-apiserver",
            "kube-controller-manager": self.kubernetes / "kube-controller-manager",
            "kube-scheduler": self.kubernetes / "kube-scheduler",
            "kubectl": self.kubernetes / "kubectl",
            "kwok": self.kwok / "kwok",
            "helm": self.helm / "helm",
        }[component]


def _run_testbin(*args: str) -> dict[str, Path]:
    proc = subprocess.run(["bash", str(TESTBIN_SCRIPT), *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"`{TESTBIN_SCRIPT.relative_to(REPO)} {' '.join(args)}` failed with exit code {proc.returncode} "
            "(its log is above); the control plane binaries cannot be built"
        )
    dirs = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            dirs[key.strip().lower()] = Path(value.strip())
    return dirs


def testbin_built() -> bool:
    return subprocess.run(["bash", str(TESTBIN_SCRIPT), "--check"]).returncode == 0


def ensure_testbin() -> Testbin:
    """Build the pinned binaries when missing (minutes when cold), return where they are."""
    if not testbin_built():
        log(
            "control plane binaries missing: building them with hack/testbin.sh (cold: about 9 min on 2 cores)"
        )
    dirs = _run_testbin()
    try:
        return Testbin(dirs["kubernetes"], dirs["etcd"], dirs["kwok"], dirs["helm"])
    except KeyError as exc:
        raise ControlPlaneError(f"hack/testbin.sh printed no {exc} directory") from None


# --------------------------------------------------------------------------------------------
# PKI (cryptography)


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.chmod(mode)
    tmp.replace(path)


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs for admin/controller-manager/scheduler, SA keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=30)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("kubetune-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki / "ca.key", pem_key(ca_key))
    _write(pki / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(stem: str, cn: str, orgs=(), server=False, sans=()) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn, orgs))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            entries: list[x509.GeneralName] = []
            for san in sans:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    entries.append(x509.DNSName(san))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(pki / f"{stem}.key", pem_key(key))
        _write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)

    service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        sans=(
            "127.0.0.1",
            REAL_NODE_GATEWAY,  # where the real node's pods reach it (tests/support/realnode.py)
            "::1",
            "localhost",
            service_ip,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    )
    issue("admin", "kubetune-admin", orgs=("system:masters",))
    # The aggregation layer's front proxy: its own CA, as kubeadm does.
    fp_key = ec.generate_private_key(ec.SECP256R1())
    fp_name = name("kubetune-front-proxy-ca")
    fp_cert = (
        x509.CertificateBuilder()
        .subject_name(fp_name)
        .issuer_name(fp_name)
        .public_key(fp_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(fp_key, hashes.SHA256())
    )
    _write(pki / "front-proxy-ca.crt", fp_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(name("front-proxy-client"))
        .issuer_name(fp_name)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(fp_key, hashes.SHA256())
    )
    _write(pki / "front-proxy-client.key", pem_key(client_key))
    _write(pki / "front-proxy-client.crt", client_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki / "sa.key", pem_key(sa_key))
    _write(
        pki / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubetune-test",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "kubetune-test", "context": {"cluster": "kubetune-test", "user": user}}],
        "current-context": "kubetune-test",
    }
    _write(path, yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Processes


# Processes this Python process started: poll() them instead of guessing from /proc (and never
# waitpid() a PID that is not ours: PIDs wrap, pid_max is often 32768).
_CHILDREN: dict[int, subprocess.Popen] = {}


def spawn(argv: list[str], log_file: Path, cwd: Path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start ARGV in a session of its own (a signal to the tests never reaches it), its output appended to
    LOG_FILE after a line that says when and what started; remembered as one of _CHILDREN."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as logf:
        logf.write(f"\n==== {dt.datetime.now().isoformat()} starting: {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], starttime is [19])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the PID, an identity that survives
    PID reuse."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, binary: str | None = None, start: int | None = None) -> bool:
    """True while PID runs (not a zombie) and, when given, its executable is BINARY and it started at
    START (so a reused PID is never mistaken for ours)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    if start is not None and (len(fields) <= 19 or int(fields[19]) != start):
        return False
    if binary is not None:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            return False
        return argv0 == binary
    return True


# Every signal the test bed sends, machine-wide (all checkouts append here): when a process of a control plane
# or a real node dies, this says whether the test bed itself killed it, from which process and why.
SIGNAL_LOG = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "kubetune-signals.log"


def send_signal(pid: int, sig: int, why: str) -> None:
    """os.kill(PID, SIG), recorded in SIGNAL_LOG with the target's command and WHY."""
    try:
        target = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        target = "?"
    line = (
        f"{dt.datetime.now(dt.UTC).isoformat()} from pid {os.getpid()} ({os.getcwd()}): "
        f"{signal.Signals(sig).name} to pid {pid} ({target}) start {proc_start_time(pid)}: {why}\n"
    )
    with contextlib.suppress(OSError), open(SIGNAL_LOG, "a") as log_file:
        log_file.write(line)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signals_sent_to(pid: int, lines: int = 2000) -> list[str]:
    """SIGNAL_LOG's recent lines about PID."""
    try:
        recent = SIGNAL_LOG.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
    return [line for line in recent if f" to pid {pid} (" in line]


def exit_status(pid: int) -> str:
    """How PID ended, when it was a child of this process: "exit code N" or "killed by SIGNAME"."""
    child = _CHILDREN.get(pid)
    if child is None:
        return "exit status unknown (not a child of this process)"
    code = child.poll()
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def stop_pid(
    pid: int,
    binary: str | None,
    start: int | None = None,
    grace: float = 10.0,
    why: str = "stopped by the test bed",
) -> str:
    """SIGTERM, then SIGKILL after GRACE seconds; only while PID is still that process (BINARY, START).
    Returns how it ended (exit_status) when it was our child; every signal goes to SIGNAL_LOG with WHY."""
    if not pid_alive(pid, binary, start):
        status = exit_status(pid)
        _CHILDREN.pop(pid, None)  # a PID of ours that ended: never mistake a later process with it for ours
        return status
    start = start if start is not None else proc_start_time(pid)
    send_signal(pid, signal.SIGTERM, why)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid, binary, start):
            break
        time.sleep(0.05)
    else:
        send_signal(pid, signal.SIGKILL, f"{why} (still there {grace:g} s after SIGTERM)")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pid_alive(pid, binary, start):
            time.sleep(0.05)
    child = _CHILDREN.get(pid)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    status = exit_status(pid)
    _CHILDREN.pop(pid, None)
    return status


# --------------------------------------------------------------------------------------------
# The control plane


@dataclass
class ControlPlane:
    dir: Path = CLUSTER_DIR
    state: dict = field(default_factory=dict)

    # paths ------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state['ports']['apiserver']}"

    # state ------------------------------------------------------------------------------
    def load(self) -> bool:
        try:
            self.state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            self.state = {}
        return bool(self.state)

    def save(self) -> None:
        _write(self.state_file, json.dumps(self.state, indent=2), 0o644)
        pids = self.dir / "pids"
        pids.mkdir(parents=True, exist_ok=True)
        for name, comp in self.state.get("components", {}).items():
            _write(pids / f"{name}.pid", f"{comp['pid']}\n", 0o644)

    @contextlib.contextmanager
    def lock(self):
        """Serialise up/down between processes (make targets, concurrent pytest sessions)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "up.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # HTTP ------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def _get_ok(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def apiserver_ready(self) -> bool:
        return self._get_ok(self.server + "/readyz", self._ssl())

    # health ------------------------------------------------------------------------------
    def processes_alive(self) -> dict[str, bool]:
        comps = self.state.get("components", {})
        return {
            name: name in comps
            and pid_alive(comps[name]["pid"], comps[name]["argv"][0], comps[name].get("start"))
            for name in COMPONENTS
        }

    def healthy(self) -> bool:
        return bool(self.state) and all(self.processes_alive().values()) and self.apiserver_ready()

    # start ------------------------------------------------------------------------------
    def _argv(self, component: str, tb: Testbin) -> list[str]:
        p, pki, d = self.state["ports"], self.pki, self.dir
        binary = str(tb.binary(component))
        if component == "etcd":
            peer = f"http://127.0.0.1:{p['etcd_peer']}"
            client = f"http://127.0.0.1:{p['etcd']}"
            return [
                binary,
                "--name=kubetune",
                f"--data-dir={self.state['etcd_data']}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kubetune={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=info",
                "--snapshot-count=10000",
            ]
        if component == "kube-apiserver":
            return [
                binary,
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                *self._apiserver_network_flags(),
                f"--secure-port={p['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--profiling=false",
                f"--cert-dir={d / 'pki' / 'apiserver-generated'}",
                # To the kubelets (the real node's; `kubectl logs`, exec): the admin client certificate.
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
            ]
        if component == "kube-controller-manager":
            kc = str(d / "controller-manager.kubeconfig")
            return [
                binary,
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller_manager']}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cert-dir={d / 'pki' / 'controller-manager-generated'}",
                "--profiling=false",
            ]
        if component == "kube-scheduler":
            kc = str(d / "scheduler.kubeconfig")
            return [
                binary,
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                "--leader-elect=false",
                f"--cert-dir={d / 'pki' / 'scheduler-generated'}",
                "--profiling=false",
            ]
        if component == "kwok":
            return [
                binary,
                f"--kubeconfig={self.kubeconfig}",
                f"--config={d / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
                f"--server-address=127.0.0.1:{p['kwok']}",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.240.0.1",
                "--node-lease-duration-seconds=40",
            ]
        raise KeyError(component)

    def _apiserver_network_flags(self) -> list[str]:
        if self.state.get("real_node"):
            # Pods of the real node reach it at the bridge's address through the kubernetes Service
            # (kube-proxy's rules to the Endpoints the lease reconciler keeps).
            return [
                "--bind-address=0.0.0.0",
                f"--advertise-address={REAL_NODE_GATEWAY}",
                "--endpoint-reconciler-type=lease",
            ]
        # Loopback only; Endpoints reject a loopback address, so no kubernetes Endpoints.
        return [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]

    def enable_real_node(self, timeout: float = 60.0) -> None:
        """Switch a running control plane to the real node's API server flags (listen beyond loopback,
        advertise the bridge's address), restarting the API server when it ran without them."""
        if self.state.get("real_node"):
            return
        self.state["real_node"] = True
        comp = self.state["components"]["kube-apiserver"]
        network = ("--bind-address=", "--advertise-address=", "--endpoint-reconciler-type=")
        argv = [a for a in comp["argv"] if not a.startswith(network)]
        argv[1:1] = self._apiserver_network_flags()
        log("restarting kube-apiserver to serve the real node's pods (bind 0.0.0.0, advertise the bridge)")
        stop_pid(comp["pid"], comp["argv"][0], comp.get("start"), why="restart for the real node's flags")
        self._spawn("kube-apiserver", argv)
        self._wait(
            "kube-apiserver /readyz",
            self.apiserver_ready,
            time.monotonic() + timeout,
            ["etcd", "kube-apiserver"],
        )

    def _spawn(self, component: str, argv: list[str]) -> int:
        proc = spawn(argv, self.log_file(component), self.dir)
        self.state.setdefault("components", {})[component] = {
            "pid": proc.pid,
            "start": proc_start_time(proc.pid),
            "argv": argv,
        }
        self.save()
        return proc.pid

    def _wait(self, what: str, check, deadline: float, components=()) -> None:
        while time.monotonic() < deadline:
            if check():
                return
            for comp in components:
                c = self.state["components"][comp]
                if not pid_alive(c["pid"], c["argv"][0], c.get("start")):
                    raise ControlPlaneError(f"{comp} exited while waiting for {what}\n" + self.log_tail(comp))
            time.sleep(0.1)
        raise ControlPlaneError(
            f"timed out waiting for {what}\n" + "\n".join(self.log_tail(c) for c in components)
        )

    def log_tail(self, component: str, lines: int = 40) -> str:
        try:
            text = self.log_file(component).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = ["(no log)"]
        return f"---- {self.log_file(component)} (last {lines} lines) ----\n" + "\n".join(text)

    def up(self, testbin: Testbin | None = None, real_node: str = "no") -> bool:
        """Start the control plane unless a healthy one runs. Returns True when this call started it.

        REAL_NODE: "yes" also starts the real node (tests/support/realnode.py; an error when it cannot),
        "auto" starts it where the host can run containers and says why not elsewhere, "no" does not."""
        from tests.support import realnode

        with self.lock():
            # Started with the real node's API server flags when it will run, saving a restart.
            wanted = (
                real_node == "yes"
                or START_FOR_REAL_NODE
                or (real_node == "auto" and realnode.host_problem() is None)
            )
            started = self._up(testbin, wanted)
            if real_node != "no":
                try:
                    realnode.RealNode(self).up()
                except realnode.RealNodeUnavailable as exc:
                    if real_node == "yes":
                        raise
                    log(f"no real node: {exc}")
            return started

    def _up(self, testbin: Testbin | None, real_node: bool = False) -> bool:
        """(called with the lock held)"""
        if self.load() and self.healthy():
            log(f"reusing the running control plane at {self.server} ({self.kubeconfig})")
            return False
        if self.state:
            log("found a stale or broken control plane: stopping what is left of it")
            self._down()
        tb = testbin or ensure_testbin()
        self._stop_orphans(tb)
        try:
            return self._start(tb, real_node)
        except ControlPlaneError as exc:
            if "exited while waiting" not in str(exc):
                raise
            # A component died while starting (seen twice in ~30 starts here, each time by a
            # SIGTERM from outside while other suites ran). Keep its logs, try once more.
            failed = self.dir / "logs.failed"
            shutil.rmtree(failed, ignore_errors=True)
            shutil.copytree(self.logs, failed)
            log(f"start failed: {str(exc).splitlines()[0]}; logs kept in {failed}; retrying once")
            return self._start(tb, real_node)

    def _start(self, tb: Testbin, real_node: bool = False) -> bool:
        """Start every component from scratch (called with the lock held)."""
        t0 = time.monotonic()
        deadline = t0 + START_TIMEOUT
        self._fresh_dir()
        etcd_data = tempfile.mkdtemp(
            prefix="kubetune-etcd-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        )
        self.state = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "etcd_data": etcd_data,
            "ports": dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True)),
            "testbin": {
                "kubernetes": str(tb.kubernetes),
                "etcd": str(tb.etcd),
                "kwok": str(tb.kwok),
                "helm": str(tb.helm),
            },
            "components": {},
            "real_node": real_node,
        }
        make_pki(self.pki)
        write_kubeconfig(self.kubeconfig, self.server, self.pki, "admin")
        write_kubeconfig(
            self.dir / "controller-manager.kubeconfig", self.server, self.pki, "controller-manager"
        )
        write_kubeconfig(self.dir / "scheduler.kubeconfig", self.server, self.pki, "scheduler")
        self.kubeconfig.chmod(0o600)
        write_kwok_config(self.dir / "kwok.yaml", tb.kwok / "stages")
        try:
            self._spawn("etcd", self._argv("etcd", tb))
            etcd_health = f"http://127.0.0.1:{self.state['ports']['etcd']}/health"
            self._wait("etcd /health", lambda: self._get_ok(etcd_health), deadline, ["etcd"])
            self._spawn("kube-apiserver", self._argv("kube-apiserver", tb))
            self._wait("kube-apiserver /readyz", self.apiserver_ready, deadline, ["etcd", "kube-apiserver"])
            t_api = time.monotonic() - t0
            for comp in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._spawn(comp, self._argv(comp, tb))
            for node in KWOK_NODES:
                self.request("POST", "/api/v1/nodes", node_manifest(node))
            storage_class = yaml.safe_load((tb.kwok / "stages" / STORAGE_CLASS).read_text())
            self.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class)
            self._wait("kwok nodes Ready", self._nodes_ready, deadline, list(COMPONENTS))
            self._wait(
                "controller-manager and scheduler /healthz",
                self._components_healthy,
                deadline,
                list(COMPONENTS),
            )
            self._wait("the default ServiceAccount", self._default_sa, deadline, list(COMPONENTS))
        except BaseException:
            log("start failed; stopping the components started so far")
            self._down(keep_logs=True)
            raise
        self.state["ready_seconds"] = round(time.monotonic() - t0, 2)
        self.state["apiserver_ready_seconds"] = round(t_api, 2)
        self.save()
        log(
            f"control plane ready in {self.state['ready_seconds']} s (apiserver {t_api:.1f} s) at "
            f"{self.server}; kubeconfig {self.kubeconfig}"
        )
        return True

    def _stop_orphans(self, tb: Testbin) -> None:
        """Stop processes of an earlier start in this directory whose PIDs were never recorded (the
        starter was killed mid-start): our binaries, running with this directory as their cwd."""
        roots = tuple(str(d) + "/" for d in (tb.kubernetes, tb.etcd, tb.kwok))
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if Path(os.readlink(proc / "cwd")) != self.dir.resolve():
                    continue
                argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0")]
            except OSError:
                continue
            if argv[0].startswith(roots):
                log(f"stopping orphaned {Path(argv[0]).name} (pid {proc.name}) left by an interrupted start")
                stop_pid(int(proc.name), argv[0], why="an orphan of an interrupted start")
                for arg in argv:
                    data = Path(arg.removeprefix("--data-dir="))
                    if arg.startswith("--data-dir=") and data.name.startswith("kubetune-etcd-"):
                        shutil.rmtree(data, ignore_errors=True)

    def _fresh_dir(self) -> None:
        for sub in ("pki", "pids"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Keep the previous run's logs for a post-mortem, start new ones.
        if self.logs.exists():
            prev = self.dir / "logs.previous"
            shutil.rmtree(prev, ignore_errors=True)
            self.logs.rename(prev)
        self.logs.mkdir(parents=True)

    def _nodes_ready(self) -> bool:
        try:
            nodes = self.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
        except (urllib.error.URLError, OSError):
            return False
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= len(KWOK_NODES)

    def _components_healthy(self) -> bool:
        ctx = ssl._create_unverified_context()  # self-signed serving certs, loopback only
        p = self.state["ports"]
        return (
            self._get_ok(f"https://127.0.0.1:{p['controller_manager']}/healthz", ctx)
            and self._get_ok(f"https://127.0.0.1:{p['scheduler']}/healthz", ctx)
            and self._get_ok(f"http://127.0.0.1:{p['kwok']}/healthz")
        )

    def _default_sa(self) -> bool:
        try:
            self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            self.request("GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
            return True
        except (urllib.error.URLError, OSError):
            return False

    def restart(self, component: str, timeout: float = 60.0) -> None:
        """Stop one component by its PID and start it again with the same arguments (and ports)."""
        with self.lock():
            if not self.load():
                raise ControlPlaneError("no control plane state to restart from")
            comp = self.state["components"][component]
            stop_pid(comp["pid"], comp["argv"][0], comp.get("start"), why=f"restart of {component}")
            self._spawn(component, comp["argv"])
            if component == "kube-apiserver":
                self._wait(
                    "kube-apiserver /readyz",
                    self.apiserver_ready,
                    time.monotonic() + timeout,
                    ["etcd", "kube-apiserver"],
                )

    @contextlib.contextmanager
    def extra_apiserver(self, name: str = "kube-apiserver-extra"):
        """A second kube-apiserver on the same etcd (as in an HA control plane), on its own port, for
        tests that restart an API server without disturbing other users of the shared one."""
        if not self.state:
            self.load()
        port = free_port()
        # Loopback only, without an endpoint reconciler even when the main one serves the real node's pods
        # (two servers would otherwise take turns writing the kubernetes Endpoints).
        network = ("--bind-address=", "--advertise-address=", "--endpoint-reconciler-type=")
        loopback = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
        argv = [
            f"--secure-port={port}"
            if a.startswith("--secure-port=")
            else f"--cert-dir={self.pki / (name + '-generated')}"
            if a.startswith("--cert-dir=")
            else a
            for a in self.state["components"]["kube-apiserver"]["argv"]
            if not a.startswith(network)
        ]
        argv[1:1] = loopback
        # Its identity Lease would be named after the host, i.e. the same as the main one's: the two
        # would fight over it. (In a real HA control plane each runs on its own host.)
        argv.append("--feature-gates=APIServerIdentity=false,UnknownVersionInteroperabilityProxy=false")
        extra = ExtraApiServer(self, name, argv, f"https://127.0.0.1:{port}")
        try:
            extra.start()
            yield extra
        finally:
            extra.stop()

    def down(self) -> None:
        with self.lock():
            self.load()
            self._down()

    def _down(self, keep_logs: bool = True) -> None:
        from tests.support import realnode

        # The real node first, while the API server still answers (its Node and volumes are deleted).
        realnode.RealNode(self).down()
        comps = self.state.get("components", {})
        pid_dir = self.dir / "pids"
        for extra in self.state.get("extra", {}).values():
            stop_pid(
                extra["pid"],
                extra["argv"][0],
                extra.get("start"),
                why="control plane down: an extra apiserver",
            )
        for name in reversed(COMPONENTS):
            comp = comps.get(name)
            pid = comp["pid"] if comp else None
            binary = comp["argv"][0] if comp else None
            start = comp.get("start") if comp else None
            if pid is None and (pid_dir / f"{name}.pid").exists():
                with contextlib.suppress(ValueError, OSError):
                    pid = int((pid_dir / f"{name}.pid").read_text())
            if pid is not None:
                # Without the state's argv, only stop a process that runs one of our binaries.
                if binary is None:
                    with contextlib.suppress(OSError):
                        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
                        if exe.endswith("/" + name) and "kubetune" in exe:
                            binary = exe
                if binary is not None:
                    stop_pid(pid, binary, start, why=f"control plane down: {name}")
            with contextlib.suppress(OSError):
                (pid_dir / f"{name}.pid").unlink()
        data = self.state.get("etcd_data")
        if data and Path(data).name.startswith("kubetune-etcd-"):
            shutil.rmtree(data, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.state_file.unlink()
        self.state = {}


class ExtraApiServer:
    """One more kube-apiserver process (see ControlPlane.extra_apiserver)."""

    def __init__(self, cp: ControlPlane, name: str, argv: list[str], server: str) -> None:
        self.cp, self.name, self.argv, self.server = cp, name, argv, server
        self.pid: int | None = None
        self.start_time: int | None = None

    def _record(self, pid: int | None) -> None:
        with self.cp.lock():
            self.cp.load()
            extras = self.cp.state.setdefault("extra", {})
            if pid is None:
                extras.pop(self.name, None)
            else:
                extras[self.name] = {"pid": pid, "start": self.start_time, "argv": self.argv}
            self.cp.save()

    def ready(self) -> bool:
        return self.cp._get_ok(self.server + "/readyz", self.cp._ssl())

    def start(self, timeout: float = 60.0) -> None:
        proc = spawn(self.argv, self.cp.log_file(self.name), self.cp.dir)
        self.pid, self.start_time = proc.pid, proc_start_time(proc.pid)
        self._record(proc.pid)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not pid_alive(proc.pid, self.argv[0], self.start_time) or time.monotonic() > deadline:
                self.stop()
                raise ControlPlaneError(f"{self.name} did not become ready\n" + self.cp.log_tail(self.name))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid, self.argv[0], self.start_time, why=f"stop of {self.name}")
            self.pid = None
            self._record(None)

    def restart(self) -> None:
        self.stop()
        self.start()


# --------------------------------------------------------------------------------------------
# kwok


def node_manifest(node: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node["name"],
            "annotations": {
                KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": node["name"],
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                **node["labels"],
            },
        },
        "spec": {},
        "status": {
            "capacity": node["capacity"],
            "allocatable": node["capacity"],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "kwok",
                "containerRuntimeVersion": "kwok",
            },
        },
    }


def _label_or_annotation(key: str) -> str:
    return f'.metadata.labels["{key}"] // .metadata.annotations["{key}"]'


def kwok_stages(stages_dir: Path) -> list[dict]:
    """The release's own 'fast' Stages, plus kubetune's outcome switch (see the module docstring)."""

    def load(rel: str) -> dict:
        path = stages_dir / rel
        if not path.exists():
            raise ControlPlaneError(f"kwok stage {path} missing: rebuild with hack/testbin.sh")
        return yaml.safe_load(path.read_text())

    delay = {
        "durationMilliseconds": 0,
        "durationFrom": {"expressionFrom": _label_or_annotation(RUN_DURATION_KEY)},
    }

    complete = load("pod/fast/pod-complete.yaml")
    complete["spec"]["selector"]["matchExpressions"].append(
        {"key": f'.metadata.labels["{OUTCOME_LABEL}"]', "operator": "NotIn", "values": ["fail", "run"]}
    )
    complete["spec"]["delay"] = delay

    fail = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "kubetune-pod-fail"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": f'.metadata.labels["{OUTCOME_LABEL}"]', "operator": "In", "values": ["fail"]},
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                ]
            },
            "delay": delay,
            "next": {"statusTemplate": FAIL_TEMPLATE.replace("EXIT_CODE_EXPR", _exit_code_template())},
        },
    }
    # What a kubelet does with a pod being deleted (an eviction, a drain, a Job suspended or deleted):
    # it stops the containers (SIGTERM: exit 143) once they exit or the grace period ends, reports the
    # pod Failed with the conditions it has (an eviction's DisruptionTarget stays), and only then deletes
    # it. kwok's own pod-delete deletes at once, whatever the phase: a pod that carries the Job's
    # batch.kubernetes.io/job-tracking finalizer then stays Terminating forever, since the Job controller
    # releases it only for a pod in a terminal phase, and no replacement is made.
    terminate = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "kubetune-pod-terminate"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                    {"key": ".status.phase", "operator": "NotIn", "values": ["Succeeded", "Failed"]},
                ]
            },
            "delay": {
                "durationMilliseconds": TERMINATE_AFTER_SECONDS * 1000,
                "durationFrom": {"expressionFrom": _STOP_DELAY_EXPR},
            },
            "next": {
                "event": {"type": "Normal", "reason": "Killing", "message": "Stopping the containers (kwok)"},
                "statusTemplate": TERMINATED_TEMPLATE,
            },
        },
    }
    delete = load("pod/fast/pod-delete.yaml")
    delete["spec"]["selector"]["matchExpressions"].append(
        {"key": ".status.phase", "operator": "In", "values": ["Succeeded", "Failed"]}
    )
    pods = [load("pod/fast/pod-ready.yaml"), complete, fail, terminate, delete]
    if os.environ.get("KUBETUNE_KWOK_PODS", "").strip().lower() in ("0", "off", "no", "false"):
        # Pods are scheduled and never run: what a cluster shows whose nodes cannot run the test's images
        # (kind). Tests without the kwok marker must pass on it (docs/testing.md, "Markers").
        pods = []
    return [
        load("node/fast/node-initialize.yaml"),
        load("node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"),
        *pods,
        # A fake dynamic provisioner for the default StorageClass "kwok-volume" (see STORAGE_CLASS):
        # claims get a PersistentVolume and are Bound at once; deleting them releases and deletes it.
        load("volume/fast/pvc-provision.yaml"),
        load("volume/fast/pv-bind.yaml"),
        load("volume/fast/pvc-delete.yaml"),
        load("volume/fast/pv-delete.yaml"),
    ]


STORAGE_CLASS = "volume/fast/storage-class.yaml"  # kwok's own: kwok-volume, default class, Immediate


def _exit_code_template() -> str:
    return (
        f"{{{{ $labels := or .metadata.labels dict }}}}{{{{ $annotations := or .metadata.annotations dict }}}}"
        f'{{{{ $code := or ( index $labels "{EXIT_CODE_KEY}" ) ( index $annotations "{EXIT_CODE_KEY}" ) "1" }}}}'
    )


# The containers of a deleted pod stop after its grace period or TERMINATE_AFTER_SECONDS, whichever
# is shorter (the time left until its deletionTimestamp, as a Go duration; negative means at once).
TERMINATE_AFTER_SECONDS = 2
_STOP_DELAY_EXPR = (
    "[((.metadata.deletionTimestamp | fromdateiso8601) - now | floor), "
    + str(TERMINATE_AFTER_SECONDS)
    + '] | min | "\\(.)s"'
)

# A strategic merge patch of the status: conditions merge by type, so the eviction's DisruptionTarget
# (and any other condition) is kept; Ready and ContainersReady turn False.
TERMINATED_TEMPLATE = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodFailed
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodFailed
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 143
      finishedAt: {{ $now | Quote }}
      reason: Error
      message: "terminated by kwok: the pod was deleted (SIGTERM)"
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Failed
"""

FAIL_TEMPLATE = """\
{{ $now := Now }}
EXIT_CODE_EXPR
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodFailed
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodFailed
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $code }}
      finishedAt: {{ $now | Quote }}
      reason: Error
      message: "failed by kwok (label kwok.kubetune.io/outcome=fail)"
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Failed
"""


def write_kwok_config(path: Path, stages_dir: Path) -> None:
    # Only Stages: without a KwokConfiguration document kwok uses its defaulted one (plus our flags).
    _write(path, yaml.safe_dump_all(kwok_stages(stages_dir), sort_keys=False), 0o644)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.controlplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the control plane (or reuse a healthy one)")
    up.add_argument(
        "--real-node",
        nargs="?",
        const="yes",
        default="no",
        choices=("yes", "auto", "no"),
        help="also start the real containerd + kubelet node (tests/support/realnode.py); "
        "auto: where this host can run containers",
    )
    sub.add_parser("down", help="stop every component by PID and drop etcd's data")
    sub.add_parser("status", help="exit 0 when a healthy control plane is up")
    r = sub.add_parser("restart", help="restart one component in place")
    r.add_argument("component", choices=COMPONENTS)
    args = parser.parse_args(argv)
    # `timeout` and CI send SIGTERM: unwind through up()'s cleanup instead of leaving orphans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cp = ControlPlane()
    try:
        if args.cmd == "up":
            cp.up(real_node=args.real_node)
            print(cp.kubeconfig)
        elif args.cmd == "down":
            cp.down()
            log("stopped")
        elif args.cmd == "status":
            if not cp.load():
                print("down")
                return 1
            alive = cp.processes_alive()
            for name, ok in alive.items():
                print(
                    f"{name:26} {'running' if ok else 'NOT RUNNING'}  pid "
                    f"{cp.state['components'].get(name, {}).get('pid')}"
                )
            ready = cp.apiserver_ready()
            print(f"{'apiserver /readyz':26} {'ok' if ready else 'NOT READY'}  {cp.server}")
            print(f"{'kubeconfig':26} {cp.kubeconfig}")
            from tests.support import realnode

            node = realnode.RealNode(cp)
            node_ok = True
            if node.info():
                node_ok = node.healthy()
                print(
                    f"{'real node ' + realnode.NODE_NAME:26} {'Ready' if node_ok else 'NOT HEALTHY'}  {node.socket}"
                )
            return 0 if ready and all(alive.values()) and node_ok else 1
        elif args.cmd == "restart":
            cp.restart(args.component)
    except ControlPlaneError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: realnode and controlplane import each other
    # by name, and an exception class of the __main__ copy would not be the one they raise.
    from tests.support.controlplane import main as _main

    sys.exit(_main())
