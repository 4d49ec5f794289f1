"""The trainer image's Dockerfile (it cannot be built here: no Docker engine): the invariants the
operator and the cluster rely on, parsed from the file."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from kubetune.api.v1alpha1.trainerconfig import CACHE_DIR, METRICS_PORT, RENDEZVOUS_PORT, WORK_DIR

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer_image" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        current = ""
    return lines


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, rest))
    return out


def test_final_stage_runs_kubetune_trainer_launch_as_non_root(stages):
    final = stages[-1]
    user = [rest for keyword, rest in final if keyword == "USER"]
    assert user, "the runtime stage must set USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 1000  # numeric, so runAsNonRoot can verify it
    entrypoint = json.loads(next(rest for keyword, rest in final if keyword == "ENTRYPOINT"))
    assert entrypoint[-1] == "kubetune-trainer"
    assert json.loads(next(rest for keyword, rest in final if keyword == "CMD")) == ["launch"]


def test_installs_the_trainer_extra_with_the_constraints(stages):
    runs = [rest for stage in stages for keyword, rest in stage if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r) and "[trainer]" in r]
    assert installs, "pip install of .[trainer] missing"
    words = shlex.split(installs[0])
    assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt"
    copies = " ".join(rest for stage in stages for keyword, rest in stage if keyword == "COPY")
    for needed in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "operator",
        "trainer_image/kubetune_trainer",
    ):
        assert needed in copies
    # deepspeed stays optional: only behind the build argument
    assert all("INSTALL_DEEPSPEED" in r for r in runs if "deepspeed==" in r)


def test_cuda_base_matches_the_pinned_torch(stages):
    import torch

    args = [rest for keyword, rest in instructions(DOCKERFILE.read_text()) if keyword == "ARG"]
    base = dict(a.partition("=")[::2] for a in args)["CUDA_IMAGE"]
    # Every stage starts from the base, or from an earlier stage that did.
    named: set[str] = set()
    for stage in stages:
        image, _, alias = next(rest for keyword, rest in stage if keyword == "FROM").partition(" AS ")
        assert image == "${CUDA_IMAGE}" or image in named, f"stage FROM {image}"
        named.add(alias.strip())
    assert base.startswith("nvidia/cuda:") and "ubuntu" in base
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)", base).group(1)
    if torch.version.cuda:  # the CUDA build of torch pinned in constraints.txt
        assert cuda == torch.version.cuda, f"base image CUDA {cuda} != torch's {torch.version.cuda}"


def test_runtime_environment(stages):
    final = " ".join(rest for keyword, rest in stages[-1] if keyword in ("ENV", "RUN", "EXPOSE", "WORKDIR"))
    assert f"HF_HOME={CACHE_DIR}" in final
    assert WORK_DIR in final
    assert str(METRICS_PORT) in final and str(RENDEZVOUS_PORT) in final


def test_dockerignore_keeps_what_the_images_copy():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "operator", "trainer_image"):
        assert needed not in ignored
    for heavy in (".venv", ".git", ".cluster"):
        assert heavy in ignored
