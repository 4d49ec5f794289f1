"""The index behind the watch-event fan-out (kubetune.reconcile.references): which objects refer to which,
for FineTuneJob chains (chains.Dependents) and for the ModelServes that serve a FineTuneJob's result."""

from __future__ import annotations

from kubetune.reconcile.references import ReferenceIndex
from kubetune.reconcile.sources import referenced_jobs

from .helpers import modelserve


def refers(*names: str) -> dict:
    return {"spec": {"refs": list(names)}}


def index() -> ReferenceIndex:
    return ReferenceIndex(lambda obj: obj["spec"]["refs"])


def test_an_object_is_found_by_each_name_it_refers_to_in_its_own_namespace_only():
    idx = index()
    idx.note("ns", "b", refers("x", "y"))
    idx.note("ns", "a", refers("x"))
    idx.note("other", "c", refers("x"))
    assert idx.of("ns", "x") == ["a", "b"]  # sorted
    assert idx.of("ns", "y") == ["b"]
    assert idx.of("other", "x") == ["c"]
    assert idx.of("ns", "z") == [] and idx.of("nowhere", "x") == []


def test_a_new_version_replaces_what_the_object_referred_to():
    idx = index()
    idx.note("ns", "a", refers("x"))
    idx.note("ns", "a", refers("y"))
    assert idx.of("ns", "x") == [] and idx.of("ns", "y") == ["a"]


def test_a_deleted_object_or_one_without_references_refers_to_nothing():
    idx = index()
    idx.note("ns", "a", refers("x"))
    idx.note("ns", "b", refers("x"))
    idx.note("ns", "a", None)  # DELETED
    idx.note("ns", "b", refers())  # its reference removed
    assert idx.of("ns", "x") == []
    idx.note("ns", "a", None)  # a second deletion of an unknown object is harmless
    assert idx.of("ns", "x") == []


def test_modelserves_are_found_by_the_finetunejobs_of_their_model_and_adapters():
    idx = ReferenceIndex(referenced_jobs)
    served = modelserve(
        model={"fineTuneJobRef": {"name": "base"}},
        adapters=[{"name": "support", "fineTuneJobRef": {"name": "lora"}}],
    )
    idx.note("ns", "bot", served)
    idx.note("ns", "plain", modelserve(model={"uri": "hf://org/tiny"}))
    assert idx.of("ns", "base") == ["bot"] and idx.of("ns", "lora") == ["bot"]  # not "plain"
    idx.note("ns", "bot", modelserve(model={"uri": "hf://org/tiny"}))  # it serves a Hub model now
    assert idx.of("ns", "base") == [] and idx.of("ns", "lora") == []
