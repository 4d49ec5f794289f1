"""reconcile/index.py: the objects the watches delivered, as the reconciles read them."""

from __future__ import annotations

import pytest

from kubetune.reconcile.index import WatchIndex, match_namespace


def job(name: str, owner: str, rv: str, **status) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "ownerReferences": [{"kind": "FineTuneJob", "uid": owner, "controller": True}],
            "managedFields": [{"manager": "kubetune"}],
        },
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "trainer"}]}}},
        "status": status,
    }


def test_reads_are_copies_of_the_latest_version_without_what_decisions_never_read():
    index = WatchIndex()
    index.put(job("a", "ftj-1", "1"))
    index.put(job("a", "ftj-1", "2", active=1))
    got = index.get("Job", "ns", "a")
    assert got is not None and got["status"] == {"active": 1} and got["metadata"]["resourceVersion"] == "2"
    assert got["spec"] == {"suspend": False} and "managedFields" not in got["metadata"]  # trimmed
    got["status"]["active"] = 99  # a reader's copy: the index keeps its own
    assert index.get("Job", "ns", "a")["status"] == {"active": 1}
    assert index.get("Job", "other", "a") is None and index.get("Pod", "ns", "a") is None


def test_children_by_their_controller_follow_owner_changes_and_deletions():
    index = WatchIndex()
    index.put(job("a", "ftj-1", "1"))
    index.put(job("b", "ftj-1", "1"))
    index.put(job("c", "ftj-2", "1"))
    assert [j["metadata"]["name"] for j in index.owned("Job", "ns", "ftj-1")] == ["a", "b"]
    index.put(job("b", "ftj-2", "2"))  # adopted by another owner
    assert [j["metadata"]["name"] for j in index.owned("Job", "ns", "ftj-1")] == ["a"]
    assert [j["metadata"]["name"] for j in index.owned("Job", "ns", "ftj-2")] == ["b", "c"]
    index.remove("Job", "ns", "a")
    assert index.owned("Job", "ns", "ftj-1") == [] and len(index) == 2


def test_removing_by_uid_keeps_a_newer_object_of_the_same_name():
    index = WatchIndex()
    index.put(job("a", "ftj-1", "1"))
    index.remove("Job", "ns", "a", uid="uid-of-an-older-a")
    assert index.get("Job", "ns", "a") is not None
    index.remove("Job", "ns", "a", uid="uid-a")
    assert index.get("Job", "ns", "a") is None


@pytest.mark.parametrize(
    "pattern",
    ["ftj-*", "team-a", "!kube-*", "myapp-*, !*-pr-*, *pr-123", "!*-pr-*, *pr-123", "a?c, !abc", "*"],
)
def test_the_watched_namespaces_are_kopfs(pattern):
    """The index is primed in the namespaces kopf watches: the same matching as kopf's own."""
    from kopf._cogs.structs.references import match_namespace as kopfs

    names = ["ftj-1", "team-a", "team-b", "kube-system", "myapp-test", "myapp-pr-123", "myapp-pr-456",
             "otherapp-pr-123", "abc", "axc", "default"]  # fmt: skip
    assert [n for n in names if match_namespace(n, pattern)] == [n for n in names if kopfs(n, pattern)]
