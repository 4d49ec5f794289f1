"""A real MLflow tracking server on loopback (sqlite backend store, local artifact root), for tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waiting import process_exited, wait_for


class MLflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "mlflow-server.log"

    def start(self, timeout: float = 240.0) -> MLflowServer:
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
        assert mlflow, "the mlflow command is not installed next to this Python (dev extra)"
        cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=self.root)
        try:
            wait_for(
                self._healthy, timeout, 1.0, f"the MLflow server's /health at {self.uri}",
                fail_if=process_exited(self.proc, "mlflow server", lambda: self.log.read_text()[-3000:]),
            )  # fmt: skip
        except AssertionError:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
            return resp.status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
