"""A real OCI registry for tests: the CNCF distribution registry (hack/registry, built by
``hack/gotools.sh registry``) on a chosen address, storage in a folder, optionally with htpasswd users (the
registry then answers 401 with a Basic challenge, as a registry with accounts does); plus crane
(``hack/gotools.sh crane``), a second client to read back what the trainer pushed with oras, and a fault
injector that refuses pushes with 403 in front of a real registry.

    registry = OCIRegistry(tmp_path, users={"alice": "secret"}).start()   # 127.0.0.1, a free port
    registry.host            # "127.0.0.1:PORT" (plain HTTP: list it in $KUBETUNE_OCI_PLAIN_HTTP)
    registry.docker_config(tmp_path / "auth.json", "alice", "secret")   # what a dockerconfigjson Secret holds
    crane(registry, "manifest", f"{registry.host}/team/model:v1", auth=...)
    registry.stop()

For pods on the real node, bind it to the node's bridge address (10.245.0.1): ``OCIRegistry(root,
address="10.245.0.1")``; containerd on the host reaches it there too.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.support import ports
from tests.support.waiting import process_exited, wait_for

REPO = Path(__file__).resolve().parents[2]
GOTOOLS = REPO / "hack" / "gotools.sh"


def tool(name: str) -> Path:
    """Build (when missing) and find one of hack/gotools.sh's tools (registry, crane)."""
    proc = subprocess.run(["bash", str(GOTOOLS), name], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/gotools.sh {name} failed:\n{proc.stderr[-3000:]}")
    key = name.upper() + "="
    for line in proc.stdout.splitlines():
        if line.startswith(key):
            return Path(line[len(key) :])
    raise RuntimeError(f"hack/gotools.sh printed no {key} line:\n{proc.stdout}")


def free_port(address: str = "127.0.0.1") -> int:
    """A free port on ADDRESS (loopback: tests.support.ports; another address, e.g. the real node's bridge,
    is asked directly)."""
    if address == "127.0.0.1":
        return ports.free_port()
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def docker_config_auth(host: str, user: str, password: str) -> dict:
    """The body of a kubernetes.io/dockerconfigjson Secret's .dockerconfigjson for one registry."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"auths": {host: {"username": user, "password": password, "auth": auth}}}


class OCIRegistry:
    """One registry process (started and stopped by PID)."""

    def __init__(self, root: Path, *, address: str = "127.0.0.1", port: int | None = None,
                 users: dict[str, str] | None = None) -> None:  # fmt: skip
        self.root = root
        self.address = address
        self.port = port or free_port(address)
        self.users = users or {}
        self.proc: subprocess.Popen | None = None
        self.log = root / "registry.log"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def docker_config(self, path: Path, user: str, password: str) -> Path:
        path.write_text(json.dumps(docker_config_auth(self.host, user, password)))
        return path

    def start(self, timeout: float = 60.0) -> OCIRegistry:
        binary = tool("registry")
        self.root.mkdir(parents=True, exist_ok=True)
        config: dict = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "kubetune-test-registry"},
        }
        if self.users:
            lines = [
                subprocess.run([str(binary), "htpasswd", user, password], capture_output=True, text=True,
                               check=True).stdout.strip()
                for user, password in self.users.items()
            ]  # fmt: skip
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "kubetune-test", "path": str(self.root / "htpasswd")}}
        (self.root / "config.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [str(binary), "serve", str(self.root / "config.yml")],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2):
                    return True
            except urllib.error.HTTPError as error:
                return error.code == 401  # up, asking for credentials

        exited = process_exited(self.proc, "the registry", lambda: self.log.read_text()[-3000:])
        try:
            wait_for(answers, timeout, 0.2, f"the registry on {self.url}", fail_if=exited)
        except BaseException:  # never leave the process behind, whatever stopped the wait
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def crane(host: str, *args: str, auth: Path | None = None, timeout: float = 120) -> str:
    """Run crane against a plain-HTTP registry (--insecure), with AUTH (a docker config) as its credentials."""
    return crane_bytes(host, *args, auth=auth, timeout=timeout).decode()


def crane_bytes(host: str, *args: str, auth: Path | None = None, timeout: float = 120) -> bytes:
    """crane's output as bytes (`crane blob` prints a blob)."""
    del host  # the reference in ARGS names it; kept for symmetry with crane()
    env = dict(os.environ)
    if auth is not None:
        folder = auth.parent / f"crane-{auth.stem}"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(auth.read_text())
        env["DOCKER_CONFIG"] = str(folder)
    else:
        env["DOCKER_CONFIG"] = "/nonexistent"
    proc = subprocess.run(
        [str(tool("crane")), *args, "--insecure"], capture_output=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"crane {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}"
        )
    return proc.stdout


class RefusingProxy:
    """A fault injector in front of a real registry: reads pass through, every write (POST, PUT, PATCH,
    DELETE) is answered 403 with the distribution spec's DENIED error, as a registry answers a user who may
    pull but not push."""

    def __init__(self, upstream: str, address: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        upstream_url = self.upstream

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _deny(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps(
                    {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
                )
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_POST = do_PUT = do_PATCH = do_DELETE = _deny

            def _forward(self):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                request = urllib.request.Request(
                    upstream_url + self.path, method=self.command, headers=headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, reply, body = response.status, response.headers, response.read()
                except urllib.error.HTTPError as error:
                    status, reply, body = error.code, error.headers, error.read()
                self.send_response(status)
                for key, value in reply.items():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.host = f"{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RefusingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
