"""s3:// output: each complete checkpoint is mirrored to ``<output uri>/checkpoints/checkpoint-STEP/`` and a
restart with an empty staging dir (a new pod's emptyDir) resumes from the newest complete one there.

The rules are the local ones (checkpoints.py): a checkpoint counts only with its marker naming this run. The
marker is uploaded last and removed first (before overwriting or deleting), so a partial copy never counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from kubetune.api.v1alpha1 import parse_uri

from . import checkpoints, sources

log = logging.getLogger("kubetune_trainer.remote")

WAIT_FOR_LOCAL_MAIN_S = 3600.0


class RemoteCheckpoints:
    """The checkpoints under s3://BUCKET/PREFIX/checkpoints (s3fs, credentials from the pod's AWS_* env)."""

    def __init__(self, output_uri: str, fs=None):
        parsed = parse_uri(output_uri, ("s3",))
        self.uri = output_uri.rstrip("/")
        self.root = f"{parsed.bucket}/{parsed.path}".rstrip("/") + "/checkpoints"
        self.fs = fs or sources.s3_filesystem()

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/checkpoints/{name}"

    def listing(self) -> list[tuple[int, str]]:
        """(step, remote folder) of every ``checkpoint-STEP`` folder, complete or not."""
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        folders = [e.rstrip("/") for e in entries]
        return sorted(
            (step, f) for f in folders if (step := checkpoints.step_of(f.rsplit("/", 1)[-1])) is not None
        )

    def read_marker(self, folder: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(f"{folder}/{checkpoints.MARKER}"))
        except (FileNotFoundError, ValueError):  # other errors propagate: a checkpoint we cannot read is
            return None  # neither restored nor pruned as incomplete

    def latest_complete(self, run_id: str) -> str | None:
        return checkpoints.newest_complete(self.listing(), self.read_marker, run_id)

    def _remove_marker(self, folder: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{folder}/{checkpoints.MARKER}")

    def upload(self, local: Path) -> str:
        """Copy a complete local checkpoint folder, its marker last; returns its s3:// URI."""
        folder = f"{self.root}/{local.name}"
        self._remove_marker(folder)  # overwriting an older copy: it stops counting first
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != checkpoints.MARKER)
        for path in files:
            self.fs.put_file(str(path), f"{folder}/{path.relative_to(local).as_posix()}")
        self.fs.put_file(str(local / checkpoints.MARKER), f"{folder}/{checkpoints.MARKER}")
        return self.uri_of(local.name)

    def prune(self, run_id: str, keep_last: int) -> list[str]:
        """Delete all but the newest `keep_last` complete checkpoints of this run (marker first)."""
        removed = checkpoints.beyond_keep(self.listing(), self.read_marker, run_id, keep_last)
        for folder in removed:
            log.info("removing remote checkpoint s3://%s", folder)
            self._remove_marker(folder)
            self.fs.rm(folder, recursive=True)
        return removed

    def download(self, folder: str, dest: Path) -> Path:
        """Copy a remote checkpoint folder to dest (via a sibling temp folder, marker last, then renamed)."""
        incoming = dest.parent / f".incoming-{dest.name}"
        shutil.rmtree(incoming, ignore_errors=True)
        files = [f for f in self.fs.find(folder) if not f.endswith("/")]
        files.sort(key=lambda f: f.endswith("/" + checkpoints.MARKER))  # the marker last
        for remote in files:
            target = incoming / remote[len(folder) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(target))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(incoming, dest)
        return dest


def for_output(output_uri: str | None) -> RemoteCheckpoints | None:
    """The remote checkpoint store of an s3:// output; None for pvc://, file:// and local runs."""
    if output_uri and output_uri.startswith("s3://"):
        return RemoteCheckpoints(output_uri)
    return None


def restore(remote: RemoteCheckpoints, output_dir: str, run_id: str) -> Path | None:
    """Fetch the newest complete remote checkpoint of this run into the staging dir; its local path, or None.

    One process per node downloads (LOCAL_RANK 0); the node's other processes wait for its complete copy.
    """
    folder = remote.latest_complete(run_id)
    if folder is None:
        return None
    dest = checkpoints.checkpoint_dir(output_dir) / folder.rsplit("/", 1)[-1]
    if os.environ.get("LOCAL_RANK", "0") == "0":
        log.info("resuming from the remote checkpoint s3://%s: downloading to %s", folder, dest)
        remote.download(folder, dest)
    else:
        deadline = time.monotonic() + WAIT_FOR_LOCAL_MAIN_S
        while not checkpoints.is_complete(checkpoints.read_marker(dest), run_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dest} was not downloaded by the node's main process")
            time.sleep(1.0)
    if not checkpoints.is_complete(checkpoints.read_marker(dest), run_id):
        raise RuntimeError(f"the downloaded checkpoint {dest} has no marker of run {run_id}")
    return dest


def push(remote: RemoteCheckpoints, local: Path, run_id: str, keep_last: int) -> str | None:
    """Upload a complete local checkpoint and prune; its s3:// URI, or None when the upload failed.

    A failed upload is logged and training goes on (the next checkpoint tries again): the local copy still
    serves a restart of this pod, and the newest complete remote one a new pod.
    """
    try:
        uri = remote.upload(local)
    except Exception as error:  # noqa: BLE001 - botocore/aiohttp errors of many kinds
        log.error("uploading checkpoint %s to %s failed: %s", local, remote.uri_of(local.name), error)
        return None
    try:
        remote.prune(run_id, keep_last)
    except Exception as error:  # noqa: BLE001
        log.warning("pruning remote checkpoints under %s failed: %s", remote.uri, error)
    return uri
