"""`kubetune operator` as a subprocess of the tests (what the chart's Deployment runs), restartable, with
its metrics and the evidence that it looked at an object.

    op = Operator(kube.kubeconfig, log_dir, namespaces="ftj-*")
    op.start(); op.restart(); op.stop()
    op.metric("kubetune_api_writes_total", kind="FineTuneJob")   a sum over the matching series
    n = op.reconciles("FineTuneJob", ns, name)                   reconciles of that object finished so far
    op.wait_reconciled("FineTuneJob", ns, name, after=n)         until one more has finished

"Nothing happened" needs proof that the operator looked: take ``reconciles`` before the change it must
look at, ``wait_reconciled`` after it, then assert that nothing else changed. The count comes from the
operator's own line per finished reconcile (logger ``kubetune.runtime``, DEBUG: "FineTuneJob ns/name
reconciled: ..."), which this harness turns on for that one logger only (the rest logs at the operator's
level: the client's DEBUG would log every response body).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RECONCILE_LOGGER = "kubetune.runtime"
# kopf's reactor: at DEBUG it names the tasks still running when it stops ("Hung tasks are stopped: ...;
# tasks left: ..."), a few lines per stop: what held a stopping operator for kopf's 5 s (docs/testing.md, "A
# kopf shutdown error line").
KOPF_STOP_LOGGER = "kopf._core.reactor.running"
# `python -m kubetune.cli operator`, with the reconcile lines of RECONCILE_LOGGER and kopf's task stops at DEBUG,
# and every thread's Python stack written to the log on SIGUSR1 (dump_stacks: what a stalled operator was doing).
BOOT = (
    "import faulthandler, logging, signal, sys; "
    "faulthandler.register(signal.SIGUSR1, all_threads=True); "
    f"logging.getLogger({RECONCILE_LOGGER!r}).setLevel(logging.DEBUG); "
    f"logging.getLogger({KOPF_STOP_LOGGER!r}).setLevel(logging.DEBUG); "
    "from kubetune.cli import main; main(sys.argv[1:])"
)


class Operator:
    """`kubetune operator` as a subprocess (what a Deployment runs), restartable."""

    def __init__(
        self,
        kubeconfig: str,
        log_dir: Path,
        namespaces: str = "ftj-*",
        trace_reconciles: bool = True,
        **env: str,
    ):
        """TRACE_RECONCILES: log a line per finished reconcile (``reconciles`` counts them; the line count of
        ``logged_lines`` leaves them out)."""
        self.kubeconfig = kubeconfig
        self.trace_reconciles = trace_reconciles
        self.log_dir = log_dir
        self.namespaces = namespaces
        self.extra_env = env
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": self.kubeconfig,
                "KUBETUNE_NAMESPACES": self.namespaces,
                "KUBETUNE_METRICS_PORT": str(self.metrics_port),
                "KUBETUNE_HEALTH_PORT": str(self.health_port),
                "KUBETUNE_BACKOFF_BASE_SECONDS": "0.5",
                "KUBETUNE_BACKOFF_MAX_SECONDS": "5",
                "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
            },
            **self.extra_env,  # may replace any of the above (a benchmark runs another tree's code)
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "w")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, "operator"]
            if self.trace_reconciles
            else [sys.executable, "-m", "kubetune.cli", "operator"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        wait_for(self.healthy, timeout, 0.2, f"the operator's liveness endpoint (log: {self.log_path})")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of NAME's samples whose labels include LABELS (0 when there is none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def reconciles(self, kind: str, namespace: str, name: str) -> int:
        """How many reconciles of KIND NAMESPACE/NAME this operator process has finished (its log)."""
        line = re.compile(
            rf" {re.escape(RECONCILE_LOGGER)}: {kind} {re.escape(namespace)}/{re.escape(name)} reconciled"
        )
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(line.findall(text))

    def wait_reconciled(self, kind: str, namespace: str, name: str, after: int, timeout: float = 30.0) -> int:
        """Wait until more than AFTER reconciles of the object have finished (AFTER from ``reconciles``
        taken before the change the operator must look at); returns the new count."""
        try:
            return wait_for(
                lambda: (n := self.reconciles(kind, namespace, name)) > after and n,
                timeout,
                0.1,
                f"a reconcile of {kind} {namespace}/{name} after the {after} before (log: {self.log_path})",
                fail_if=lambda: (
                    None if self.proc is not None and self.proc.poll() is None else "the operator exited"
                ),
            )
        except AssertionError as failure:
            raise AssertionError(
                f"{failure}\n---- the operator's threads ----\n{self.dump_stacks()}"
            ) from None

    def dump_stacks(self) -> str:
        """Every thread's Python stack of the running operator (faulthandler, on SIGUSR1), from its log."""
        if self.proc is None or self.proc.poll() is not None:
            return "(not running)"
        before = self.log_path.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: self.log_path.stat().st_size > before, 10, 0.1, "the operator's stack dump")
        time.sleep(0.5)  # the dump is written thread by thread
        with open(self.log_path, errors="replace") as log:
            log.seek(before)
            return log.read()

    def logged_lines(self) -> list[str]:
        """Every line the operator logged over all its (re)starts, without the reconcile trace lines."""
        lines: list[str] = []
        for path in sorted(self.log_dir.glob("operator-*.log")):
            lines += [
                line
                for line in path.read_text(errors="replace").splitlines()
                if f" DEBUG {RECONCILE_LOGGER}: " not in line
            ]
        return lines

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""
