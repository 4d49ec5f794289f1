"""The uploaded files, on a folder the trainer pods can read (a PersistentVolumeClaim in the chart).

Layout under the gateway's FILES_DIR (a namespace's files are only ever reached through its own folder):

    NAMESPACE/FILE_ID.jsonl          the file as uploaded (what /files/{id}/content returns)
    NAMESPACE/FILE_ID.train.jsonl    the same examples in the trainer's format (training_files)
    NAMESPACE/FILE_ID.json           the file object (written last: a file exists once this does)
    NAMESPACE/jobs/JOB/train.jsonl   a job's data: hard links to the files' training forms, so deleting
    NAMESPACE/jobs/JOB/validation.jsonl  a file later never changes a job that uses it

A FineTuneJob made through the API reads the folder NAMESPACE/jobs/JOB through the URI the settings give
(files_uri), e.g. pvc://kubetune-files/NAMESPACE/jobs/JOB.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from .training_files import TrainingFile

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
JOBS = "jobs"


class FileStore:
    """Files per namespace under ROOT; every write is a temporary file renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, namespace: str) -> Path:
        return self.root / namespace

    def _meta_path(self, namespace: str, file_id: str) -> Path | None:
        if not FILE_ID.match(file_id):
            return None
        return self._dir(namespace) / f"{file_id}.json"

    def add(self, namespace: str, filename: str, purpose: str, source: IO[bytes]) -> dict[str, Any]:
        """Check SOURCE line by line (TrainingFileError on the first bad line: nothing is kept) and store it."""
        folder = self._dir(namespace)
        folder.mkdir(parents=True, exist_ok=True)
        file_id = "file-" + secrets.token_hex(12)
        checker = TrainingFile()
        size = 0
        with (
            tempfile.NamedTemporaryFile("wb", dir=folder, prefix=".upload-", delete=False) as original,
            tempfile.NamedTemporaryFile("w", dir=folder, prefix=".train-", delete=False) as train,
        ):
            try:
                for line in source:
                    size += len(line)
                    original.write(line)
                    row = checker.row(line.rstrip(b"\r\n"))
                    if row is not None:
                        train.write(json.dumps(row, ensure_ascii=False) + "\n")
                checker.finish()
            except BaseException:
                for tmp in (original, train):
                    tmp.close()
                    Path(tmp.name).unlink(missing_ok=True)
                raise
        os.replace(train.name, folder / f"{file_id}.train.jsonl")
        os.replace(original.name, folder / f"{file_id}.jsonl")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
            "kubetune": {
                "kind": checker.kind,
                "examples": checker.examples,
                "format": checker.dataset_format,
            },
        }
        self._write_json(folder / f"{file_id}.json", meta)
        return meta

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".meta-", delete=False) as tmp:
            json.dump(data, tmp)
        os.replace(tmp.name, path)

    def get(self, namespace: str, file_id: str) -> dict[str, Any] | None:
        path = self._meta_path(namespace, file_id)
        if path is None or not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def content_path(self, namespace: str, file_id: str) -> Path | None:
        if self.get(namespace, file_id) is None:
            return None
        return self._dir(namespace) / f"{file_id}.jsonl"

    def list(self, namespace: str) -> list[dict[str, Any]]:
        folder = self._dir(namespace)
        if not folder.is_dir():
            return []
        found = []
        for path in folder.glob("file-*.json"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # deleted meanwhile
                continue
        return found

    def delete(self, namespace: str, file_id: str) -> bool:
        path = self._meta_path(namespace, file_id)
        if path is None or not path.is_file():
            return False
        path.unlink(missing_ok=True)  # first: the file is gone for readers from here on
        for suffix in (".jsonl", ".train.jsonl"):
            (self._dir(namespace) / f"{file_id}{suffix}").unlink(missing_ok=True)
        return True

    def job_folder(self, namespace: str, job: str) -> Path:
        return self._dir(namespace) / JOBS / job

    def _holds(self, folder: Path, namespace: str, splits: dict[str, str]) -> bool:
        """Whether FOLDER holds exactly SPLITS' files (the same inodes: hard links to them)."""
        try:
            names = {p.name for p in folder.iterdir()}
            return names == {f"{split}.jsonl" for split in splits} and all(
                os.path.samefile(folder / f"{split}.jsonl", self._dir(namespace) / f"{file_id}.train.jsonl")
                for split, file_id in splits.items()
            )
        except OSError:
            return False

    def link_job_data(self, namespace: str, job: str, splits: dict[str, str]) -> bool:
        """The folder of JOB with SPLITS {split name: file id} as SPLIT.jsonl (hard links where the volume
        has them, else copies). False when it was there already with these files (a replay of the same
        create); a folder left by an earlier job of that name with other files is replaced."""
        final = self.job_folder(namespace, job)
        if final.is_dir():
            if self._holds(final, namespace, splits):
                return False
            shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{job}-"))
        for split, file_id in splits.items():
            source = self._dir(namespace) / f"{file_id}.train.jsonl"
            target = staging / f"{split}.jsonl"
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        try:
            os.rename(staging, final)
        except OSError:  # made by a concurrent replay
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def drop_job_data(self, namespace: str, job: str) -> None:
        shutil.rmtree(self.job_folder(namespace, job), ignore_errors=True)


__all__ = ["FILE_ID", "FileStore"]
