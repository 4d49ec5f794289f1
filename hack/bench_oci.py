"""Push and pull times of oci:// results against the test bed's registry (docs/benchmarks.md).

    .venv/bin/python hack/bench_oci.py [--rounds 3] [--gib 1] [--json FILE]

On loopback, the CNCF distribution registry of hack/registry, storage on this machine's disk, twice: without
accounts, and with an htpasswd account (basic auth: the registry checks the password's bcrypt hash on every
request, about 0.1-0.2 s each here; token registries check once per session). Two artifacts: the tiny Llama of `make demo` (model +
tokenizer, ~1 MB) and a 1 GiB model (one safetensors file of random float32 weights + config.json). Per
round, alternating: a copy of the folder on the same disk (the floor: the bytes written once more), a push to
a new repository (every blob uploaded: kubetune_trainer.oci.push with oras, tar layers packed and hashed
first), a push of the same folder to another tag of that repository (every blob there already: oras asks
and skips), and a pull into a new folder (kubetune_trainer.oci.pull: downloaded, digests checked,
unpacked). Best of the rounds, and each as a ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "trainer_image")]

from kubetune_trainer import oci  # noqa: E402
from tests.support.oci_registry import OCIRegistry  # noqa: E402

USER, PASSWORD = "bench", "bench-secret"


def tiny_model(dest: Path) -> Path:
    from kubetune_trainer import demo

    demo.main([str(dest)])
    return dest / "tiny-llama"


def big_model(dest: Path, gib: float) -> Path:
    import torch
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    elements = int(gib * 1024**3 / 4)
    save_file({"weight": torch.rand(elements, dtype=torch.float32)}, str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps({"model_type": "bench", "hidden_size": 1}))
    return dest


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn, *args, **kwargs):
    """(seconds, value) of fn(*args, **kwargs), the written data synced to disk before the clock stops."""
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    os.sync()
    return time.perf_counter() - started, value


def bench(name: str, folder: Path, registry: OCIRegistry, auth: str | None, work: Path, rounds: int) -> dict:
    size = folder_bytes(folder)
    runs: dict[str, list[float]] = {"copy": [], "push": [], "push_unchanged": [], "pull": []}
    lineage = {"resultKind": "full", "task": "causal-lm", "configHash": "bench"}
    for r in range(rounds):
        target = work / f"copy-{name}-{r}"
        runs["copy"].append(timed(shutil.copytree, folder, target)[0])
        shutil.rmtree(target)
        uri = f"oci://{registry.host}/bench/{name}-{r}:v1"
        push = {"lineage": lineage, "name": name, "auth_path": auth, "scratch": work}
        seconds, pushed = timed(oci.push, uri, folder, **push)
        runs["push"].append(seconds)
        runs["push_unchanged"].append(timed(oci.push, uri.replace(":v1", ":again"), folder, **push)[0])
        dest = work / f"pull-{name}-{r}"
        runs["pull"].append(timed(oci.pull, pushed.uri, dest, auth_path=auth)[0])
        shutil.rmtree(dest)
    best = {k: min(v) for k, v in runs.items()}
    return {
        "artifact": name,
        "bytes": size,
        "rounds": runs,
        "best_seconds": best,
        "best_MiB_per_s": {k: round(size / 1024**2 / v, 1) for k, v in best.items()},
        "ratio_to_copy": {k: round(v / best["copy"], 2) for k, v in best.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large artifact in GiB")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-oci-", dir=os.environ.get("BENCH_OCI_DIR")) as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        artifacts = {
            "tiny-llama": tiny_model(root / "demo"),
            f"{args.gib:g}gib": big_model(root / "big", args.gib),
        }
        figures: list[dict] = []
        for kind, users in (("no accounts", None), ("htpasswd", {USER: PASSWORD})):
            registry = OCIRegistry(root / f"registry-{len(figures)}", users=users).start()
            try:
                os.environ[oci.ENV_PLAIN_HTTP] = registry.host
                auth = str(registry.docker_config(root / "auth.json", USER, PASSWORD)) if users else None
                for name, folder in artifacts.items():
                    figures.append(
                        {"registry": kind, **bench(name, folder, registry, auth, work, args.rounds)}
                    )
            finally:
                registry.stop()
    for f in figures:
        best, rate, ratio = f["best_seconds"], f["best_MiB_per_s"], f["ratio_to_copy"]
        print(
            f"{f['artifact']} ({f['bytes'] / 1024**2:.1f} MiB), registry {f['registry']}, best of {args.rounds}:"
        )
        for key in ("copy", "push", "push_unchanged", "pull"):
            print(f"  {key:15s} {best[key]:8.3f} s  {rate[key]:8.1f} MiB/s  {ratio[key]:6.2f}x the copy")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "figures": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
