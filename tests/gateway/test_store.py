"""The file store on a folder: what stays after a refused upload, a delete, and a job folder's reuse."""

from __future__ import annotations

import io
import os

import pytest

from kubetune.gateway.store import FileStore
from kubetune.gateway.training_files import TrainingFileError
from tests.gateway.helpers import chat_lines


def test_a_refused_upload_leaves_nothing_and_a_kept_one_has_its_three_files(tmp_path):
    store = FileStore(tmp_path)
    with pytest.raises(TrainingFileError, match="line 3"):
        store.add("ns", "bad.jsonl", "fine-tune", io.BytesIO(chat_lines(2) + b"[]\n"))
    assert os.listdir(tmp_path / "ns") == []
    meta = store.add("ns", "good.jsonl", "fine-tune", io.BytesIO(chat_lines(3)))
    assert sorted(os.listdir(tmp_path / "ns")) == sorted(
        f"{meta['id']}{s}" for s in (".json", ".jsonl", ".train.jsonl")
    )
    assert store.get("ns", meta["id"]) == meta and store.get("other", meta["id"]) is None
    assert store.get("ns", "../ns/" + meta["id"]) is None  # ids are checked: no path tricks
    assert [f["id"] for f in store.list("ns")] == [meta["id"]]


def test_job_folders_link_the_files_survive_their_deletion_and_are_replaced_only_when_different(tmp_path):
    store = FileStore(tmp_path)
    a = store.add("ns", "a.jsonl", "fine-tune", io.BytesIO(chat_lines(2)))
    b = store.add("ns", "b.jsonl", "fine-tune", io.BytesIO(chat_lines(3)))
    assert store.link_job_data("ns", "ftjob-1", {"train": a["id"]}) is True
    assert store.link_job_data("ns", "ftjob-1", {"train": a["id"]}) is False  # a replay: kept as is
    folder = store.job_folder("ns", "ftjob-1")
    assert os.path.samefile(folder / "train.jsonl", tmp_path / "ns" / f"{a['id']}.train.jsonl")
    assert (
        store.link_job_data("ns", "ftjob-1", {"train": b["id"], "validation": a["id"]}) is True
    )  # other files
    assert sorted(os.listdir(folder)) == ["train.jsonl", "validation.jsonl"]
    assert (
        store.delete("ns", b["id"]) and store.get("ns", b["id"]) is None and not store.delete("ns", b["id"])
    )
    assert len((folder / "train.jsonl").read_text().splitlines()) == 3  # the job's data stays
