"""What the real test node is (tests/support/realnode.py): its name, label, taint, network, images, and
the configuration files of its containerd, kubelet, kube-proxy, CNI bridge and CoreDNS. Pure: the functions
return documents (``issue_client_cert`` writes a certificate and nothing else)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from tests.support import controlplane as cpmod

NODE_NAME = "real-0"
NODE_LABEL = ("kubetune.io/real-node", "true")
TAINT = {"key": "kubetune.io/real-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE_SELECTOR = {NODE_LABEL[0]: NODE_LABEL[1]}

POD_CIDR = "10.245.0.0/24"  # kwok's fake pod IPs are 10.244.0.0/16
# The bridge's address: the pods' default route, CoreDNS, the API server's advertise address.
GATEWAY = cpmod.REAL_NODE_GATEWAY
BRIDGE = "kubetune0"
CNI_NETWORK = "kubetune-real"
CLUSTER_DOMAIN = "cluster.local"
STORAGE_CLASS = "real-local"
INITIAL_VOLUMES = 3

PAUSE_IMAGE = "docker.io/kubetune/pause:dev"
TEST_IMAGE = "docker.io/kubetune/node-test:dev"
CRI_NAMESPACE = "k8s.io"
# containerd's content and snapshots (the loaded images: the trainer image alone is ~7 GB) live in one
# folder per machine, not per checkout: only one real node runs at a time (the machine lock), and a new
# clone or a `down`/`up` then finds its images already there instead of importing them again.
IMAGE_STORE = Path(
    os.environ.get(
        "KUBETUNE_REALNODE_IMAGE_STORE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "kubetune"
        / "realnode"
        / "containerd",
    )
)


# --------------------------------------------------------------------------------------------
# certificates and configuration files


def issue_client_cert(pki: Path, stem: str, cn: str, orgs: tuple[str, ...] = ()) -> None:
    """A client certificate signed by the control plane's CA (pki/ca.key), as pki/STEM.crt/.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), (
        "the control plane's CA key is an EC key (make_pki)"
    )
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    subject = x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cpmod._write(
        pki / f"{stem}.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    cpmod._write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def containerd_config(d: Path, socket: Path, cni_conf_dir: Path) -> str:
    """containerd 1.6's config: the machine's image store as root, its own state and socket; CRI with
    the local pause image."""
    return f"""version = 2
root = "{IMAGE_STORE}"
state = "{d / "containerd" / "state"}"
oom_score = 0

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The host may not let a container lower its OOM score below the runtime's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Network namespaces under the state dir (so `down` finds every one), not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd" / "opt"}"
"""


def cni_config(ipam_dir: Path) -> dict:
    """A bridge with host-local addresses; the gateway is the bridge's own address."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # pods talk to this host only; no NAT chains to leave behind
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def kubelet_config(d: Path, socket: Path, pki: Path, port: int, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This host has cgroup v1 (hybrid); Kubernetes >= 1.35 refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "imageServiceEndpoint": f"unix://{socket}",
        # The API server reaches the kubelet at real-0 (-> 127.0.0.1 in /etc/hosts): loopback only.
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [GATEWAY],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(d / "resolv.conf"),
        "podCIDR": POD_CIDR,
        "podLogsDir": str(d / "pod-logs"),
        "volumePluginDir": str(d / "kubelet" / "volume-plugins"),
        "registerWithTaints": [TAINT],
        "failSwapOn": False,
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 30,
        # A shared development disk is often fuller than the defaults allow; images are imported, never
        # pulled, so image garbage collection would only lose them.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{GATEWAY}/32"],
        # Masquerade Service traffic, so a pod reaching a pod on the same bridge through a Service gets
        # the replies back through the host's conntrack (no br_netfilter needed).
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
        # Leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def corefile(kubeconfig: Path, ready_port: int) -> str:
    """CoreDNS on the bridge's address: the cluster domain from the API server; nothing upstream
    (no network beyond this host), so any other name is NXDOMAIN at once instead of a timeout."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {GATEWAY}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kubetune-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {GATEWAY}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def storage_class() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "labels": {NODE_LABEL[0]: NODE_LABEL[1]}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }


def local_pv(name: str, path: Path, size: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {NODE_LABEL[0]: NODE_LABEL[1]}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "local": {"path": str(path)},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                            ]
                        }
                    ]
                }
            },
        },
    }


# busybox applets the test image links (Debian's busybox-static has them all)
TEST_APPLETS = (
    "sh", "ash", "cat", "echo", "sleep", "wget", "nslookup", "ls", "mkdir", "touch", "rm", "date", "env",
    "hostname", "ip", "test", "true", "false", "id", "grep", "head", "tail", "sed", "awk", "printf", "kill",
    "ps", "df", "du", "mount", "cp", "mv", "sync", "tee", "wc", "sha256sum", "tar", "nc", "timeout", "uname", "httpd",
)  # fmt: skip
