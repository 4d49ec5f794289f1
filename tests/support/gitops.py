"""The GitOps tools' own verdicts on kubetune objects: the real runtimes, built from the Go module proxy by
hack/gotools.sh (cached; built here when missing, never skipped).

    gotool("kstatus")                     the path of a tool of hack/gotools.sh (kstatus, promtool, argocd-lua)
    kstatus(*objects)                     [{"status": ..., "message": ...}] from sigs.k8s.io/cli-utils' kstatus
    argocd_health(kind, *objects)         [{"status", "message"} or {"error"}] from charts/kubetune/argocd's
                                          health.lua of KIND run in gopher-lua as Argo CD's controller runs a
                                          check configured in argocd-cm (hack/argocd-lua)
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "charts" / "kubetune" / "argocd" / "kubetune.io"


@functools.cache
def gotool(name: str) -> str:
    """Build (or find) hack/gotools.sh's NAME; its path."""
    proc = subprocess.run(["bash", str(REPO / "hack" / "gotools.sh"), name], capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    assert proc.returncode == 0, f"hack/gotools.sh {name} failed:\n{proc.stderr[-3000:]}"
    paths = dict(line.split("=", 1) for line in proc.stdout.split())
    return paths[name.upper().replace("-", "_")]


def _jsonl(binary: list[str], objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    stdin = "".join(json.dumps(o) + "\n" for o in objects)
    proc = subprocess.run(binary, input=stdin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def kstatus(*objects: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per object (a v1 List counts as its items)."""
    return _jsonl([gotool("kstatus")], objects)


def argocd_health(kind: str, *objects: dict[str, Any], open_libs: bool = False) -> list[dict[str, Any]]:
    """Argo CD's verdict on each object: KIND's health.lua in gopher-lua. OPEN_LIBS: with every standard
    library (a check marked resource.customizations.useOpenLibs, or a built-in one)."""
    cmd = [gotool("argocd-lua"), *(["-open-libs"] if open_libs else []), str(ARGOCD / kind / "health.lua")]
    verdicts = _jsonl(cmd, objects)
    assert len(verdicts) == len(objects), verdicts
    return verdicts
