"""Write single-layer container images as Docker image archives (what `docker save` writes and
`ctr images import` reads), for the real test node: no image registry is reachable from the test
machine, so its sandbox (pause) image and its test image are packed here from files on the host.

Pure: it writes files and nothing else. The archives are byte-for-byte reproducible (fixed mtimes,
owners and order), so the image ID only changes when a file does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One path in the layer: a file (``source`` on the host), a directory or a symlink."""

    path: str  # inside the image, without the leading slash
    source: Path | None = None
    mode: int = 0o755
    link: str | None = None


@dataclass
class Image:
    ref: str  # as RepoTags names it, e.g. "kubetune/pause:dev" (containerd stores docker.io/kubetune/pause:dev)
    entries: list[Entry]
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(
        default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    workdir: str = "/"


def _layer(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            info.mode = entry.mode
            if entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.source is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = entry.source.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(image: Image, path: Path) -> str:
    """Write IMAGE as a Docker image archive at PATH; return its image ID (sha256 of the config)."""
    layer = _layer(image.entries)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd or None,
            "Env": image.env,
            "WorkingDir": image.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/support/imagetar.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [image.ref], "Layers": [f"{diff_id}/layer.tar"]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"{diff_id}/layer.tar", layer),
            (f"{image_id}.json", config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return f"sha256:{image_id}"


def busybox_entries(busybox: Path, applets: Iterable[str]) -> list[Entry]:
    """A root filesystem of one static busybox: /bin/busybox, a /bin symlink per applet, /tmp."""
    entries = [Entry("bin", mode=0o755), Entry("tmp", mode=0o1777), Entry("bin/busybox", source=busybox)]
    entries += [Entry(f"bin/{a}", link="busybox", mode=0o777) for a in sorted(set(applets)) if a != "busybox"]
    return entries
