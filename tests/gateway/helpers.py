"""What the gateway's tests and its benchmark (hack/bench_gateway.py) share: `kubetune api` as a subprocess,
the chart's RBAC for it, ServiceAccount tokens and Roles for callers, and training data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ensure_testbin
from tests.support.ports import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
GROUP, VERSION = "kubetune.io", "v1alpha1"
MAX_FILE_BYTES = 256 * 1024
# What every job made through the test gateway gets under the request's own fields: CPU, a few steps of LoRA.
JOB_DEFAULTS = {
    "resources": {"gpusPerNode": 0},
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    "dataset": {"maxLength": 64},
    "training": {"maxSteps": 6, "batchSize": 4},
    "checkpoints": {"everySteps": 3, "keepLast": 1},
}
FULL_ACCESS = ["get", "list", "create", "patch", "delete"]


def chart_docs(release: str, namespace: str, template: str) -> list[dict[str, Any]]:
    helm = str(ensure_testbin().binary("helm"))
    proc = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace, "--set", "api.enabled=true",
         "--show-only", f"templates/{template}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def service_account_token(api, namespace: str, name: str, seconds: int = 7200) -> str:
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    return (
        client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request).status.token
    )


def token_kubeconfig(server: str, ca: bytes | None, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with TOKEN against the API server at SERVER (CA: its CA bundle)."""
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        ca_file = path.with_suffix(".ca.crt")
        ca_file.write_bytes(ca)
        cluster["certificate-authority"] = str(ca_file)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    path.chmod(0o600)
    return path


def new_service_account(api, namespace: str, name: str) -> None:
    from kubernetes import client

    client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": name}})


def grant(
    api, namespace: str, subject: tuple[str, str], verbs: list[str], resource: str = "finetunejobs"
) -> str:
    """A Role with VERBS on RESOURCE.kubetune.io in NAMESPACE, bound to the ServiceAccount SUBJECT
    (namespace, name); returns the Role's name."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api)
    name = f"{subject[1]}-{resource}-{uuid.uuid4().hex[:6]}"
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": name},
        "rules": [{"apiGroups": [GROUP], "resources": [resource], "verbs": verbs}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "namespace": subject[0], "name": subject[1]}],
    })  # fmt: skip
    return name


class Gateway:
    """`kubetune api` as a subprocess (what the chart's Deployment runs)."""

    def __init__(self, kubeconfig: Path, log_dir: Path, files_dir: Path, **env: str) -> None:
        self.kubeconfig, self.log_dir, self.files_dir = kubeconfig, log_dir, files_dir
        self.port = free_port()
        self.extra_env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "gateway.log"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
            KUBETUNE_API_HOST="127.0.0.1",
            KUBETUNE_API_FILES_DIR=str(self.files_dir),
            KUBETUNE_API_FILES_URI="pvc://kubetune-files/{namespace}",
            KUBETUNE_API_OUTPUT_URI="pvc://kubetune-models/{job}",
            KUBETUNE_API_MAX_FILE_BYTES=str(MAX_FILE_BYTES),
            KUBETUNE_API_BASE_MODELS=json.dumps({"tiny": "pvc://models/tiny"}),
            KUBETUNE_API_JOB_DEFAULTS=json.dumps(JOB_DEFAULTS),
        )
        env.update(self.extra_env)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "api", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip
        wait_for(self.healthy, timeout, 0.2, f"the gateway's /healthz (log: {self.log_path})")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def client(self, token: str, namespace: str | None = None, base_url: str | None = None, **kwargs: Any):
        from openai import OpenAI

        return OpenAI(api_key=token, base_url=f"{base_url or self.url}/v1", project=namespace, **kwargs)


def chat_lines(n: int = 8) -> bytes:
    rows = [
        {"messages": [{"role": "system", "content": "Answer with the capital."},
                      {"role": "user", "content": f"capital of {country}?"},
                      {"role": "assistant", "content": capital}]}
        for country, capital in [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]
    ]  # fmt: skip
    return b"".join(json.dumps(rows[i % len(rows)]).encode() + b"\n" for i in range(n))


def list_finetunejobs(kube, namespace: str) -> list[dict[str, Any]]:
    from kubernetes import client

    return client.CustomObjectsApi(kube.api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunejobs"
    )["items"]
