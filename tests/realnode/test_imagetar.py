"""tests/support/imagetar.py: the image archives the real node imports (no cluster needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from tests.support import imagetar


def image(tmp_path: Path) -> imagetar.Image:
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    entries = [*imagetar.busybox_entries(tool, ["sh", "echo", "sh"]), imagetar.Entry("etc")]
    return imagetar.Image("kubetune-x:dev", entries, ["/bin/sh"], ["-c", "true"])


def test_an_archive_is_what_docker_save_writes_and_reproducible(tmp_path):
    image_id = imagetar.write_archive(image(tmp_path), tmp_path / "a.tar")
    assert imagetar.write_archive(image(tmp_path), tmp_path / "b.tar") == image_id
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()

    with tarfile.open(tmp_path / "a.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert len(manifest) == 1 and manifest[0]["RepoTags"] == ["kubetune-x:dev"]
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()
    # The image ID is the config's digest; the config names the layer by its digest (diff_id).
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["Entrypoint"] == ["/bin/sh"] and config["config"]["Cmd"] == ["-c", "true"]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]

    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        members = {m.name: m for m in layer.getmembers()}
    assert sorted(members) == ["bin", "bin/busybox", "bin/echo", "bin/sh", "etc", "tmp"]
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert all(m.mtime == 0 and m.uid == 0 for m in members.values())


def test_a_changed_file_changes_the_image_id(tmp_path):
    first = imagetar.write_archive(image(tmp_path), tmp_path / "a.tar")
    (tmp_path / "tool").write_bytes(b"#!/bin/sh\necho changed\n")
    changed = imagetar.Image(
        "kubetune-x:dev", imagetar.busybox_entries(tmp_path / "tool", ["sh"]), ["/bin/sh"]
    )
    assert imagetar.write_archive(changed, tmp_path / "b.tar") != first
