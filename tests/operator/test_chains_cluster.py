"""Chained FineTuneJobs on a real control plane with `kubetune operator` running: a job that starts from another
job's result waits (WaitingForModel) and creates no trainer Job until that one has Succeeded, then its
TrainerConfig points at the result; missing and failed references and cycles fail with a reason. The test
reports results through the status subresource, as the trainer does; kwok fakes the trainer pods."""

from __future__ import annotations

import copy

import pytest
import yaml

from kubetune.api.v1alpha1 import pvc_claims, validate_document
from kubetune.reconcile.chains import referenced_names
from tests.operator.test_finetunejob_cluster import _prepare_references, test_pvs  # noqa: F401 - a fixture
from tests.support.objects import FTJ, example_docs, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
RUN_FOR = {"kwok.kubetune.io/run-duration": "20s"}  # the parent's pod runs a while, then completes
FAIL = {"kwok.kubetune.io/outcome": "fail"}


def report_result(f: FTJ, name: str, uri: str, kind: str = "full", **extra) -> None:
    """What the trainer patches into its FineTuneJob's status at the end of a run."""
    result = {"uri": uri, "kind": kind, "configHash": f"hash-of-{name}", **extra}
    f.co.patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", f.ns, "finetunejobs", name, {"status": {"result": result}}
    )


def trainer_config(f: FTJ, name: str) -> dict:
    cm = f.core.read_namespaced_config_map(f"{name}-trainer-config", f.ns)
    return yaml.safe_load(cm.data["config.yaml"])


def chained(name: str, parent: str, **spec) -> dict:
    doc = tiny_job(name, **spec)
    doc["spec"]["model"] = {"fineTuneJobRef": {"name": parent}}
    return doc


def test_a_job_waits_for_its_parent_then_starts_from_its_result(ftj: FTJ):
    ftj.create(tiny_job("sft", method={"type": "full"}, labels=RUN_FOR))
    ftj.create(chained("dpo", "sft"))
    ftj.wait_phase("sft", "Running", 30)
    # the parent's own status changes wake the waiting job: the message follows its phase
    waiting = wait_for(
        lambda: "phase Running" in (c := ftj.cond("dpo", "WaitingForModel")).get("message", "") and c, 20
    )
    assert waiting["status"] == "True" and "'sft'" in waiting["message"]
    assert ftj.status("dpo")["phase"] == "Pending" and ftj.jobs("dpo") == []
    report_result(ftj, "sft", "s3://bucket/sft-result")  # the trainer's last word before it exits
    assert ftj.jobs("dpo") == []  # a result alone is not enough: the run must have Succeeded
    sft = ftj.wait_phase("sft", "Succeeded", 60)
    succeeded_at = next(c for c in sft["conditions"] if c["type"] == "Succeeded")["lastTransitionTime"]
    job = wait_for(lambda: ftj.jobs("dpo"), 30, what="the dpo trainer Job")[0]
    assert job.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ") >= succeeded_at
    config = trainer_config(ftj, "dpo")
    assert config["runtime"]["chain"]["model"] == {"uri": "s3://bucket/sft-result", "adapters": []}
    assert config["runtime"]["chain"]["parents"] == [
        {"name": "sft", "uri": "s3://bucket/sft-result", "digest": "hash-of-sft", "role": "model"}
    ]
    ready = wait_for(lambda: (c := ftj.cond("dpo", "WaitingForModel")).get("status") == "False" and c, 10)
    assert ready["reason"] == "ModelReady" and "s3://bucket/sft-result" in ready["message"]
    # A new result of the parent never restarts a finished child.
    ftj.wait_phase("dpo", "Succeeded", 60)
    report_result(ftj, "sft", "s3://bucket/sft-result-2")
    ftj.patch("sft", {"metadata": {"labels": {"touched": "yes"}}})
    assert [j.metadata.name for j in ftj.jobs("dpo")] == ["dpo-trainer"]
    assert ftj.status("dpo")["phase"] == "Succeeded"


def test_an_adapter_parent_is_merged_into_its_base(ftj: FTJ):
    ftj.create(tiny_job("lora-sft"))
    ftj.create(chained("next", "lora-sft"))
    ftj.wait_phase("lora-sft", "Succeeded", 60)
    report_result(ftj, "lora-sft", "s3://bucket/lora", kind="adapter")
    wait_for(lambda: ftj.jobs("next"), 30, what="the next trainer Job")
    chain = trainer_config(ftj, "next")["runtime"]["chain"]
    assert chain["model"] == {"uri": "hf://gpt2", "revision": "main", "adapters": ["s3://bucket/lora"]}


def test_missing_failed_and_cyclic_references_fail_with_a_reason(ftj: FTJ):
    ftj.create(chained("orphan", "nope"))
    ftj.create(tiny_job("broken", labels=FAIL, backoffLimit=0))
    ftj.create(chained("after-broken", "broken"))
    ftj.create(chained("ping", "pong"))
    ftj.create(chained("pong", "ping"))
    # #28: a missing reference waits for the job to be created (GitOps applies manifests in any order): in
    # progress, not failed.
    waiting = wait_for(
        lambda: (c := ftj.cond("orphan", "WaitingForModel")).get("reason") == "ReferenceNotFound" and c,
        30,
        what="orphan WaitingForModel with ReferenceNotFound",
    )
    assert waiting["status"] == "True" and "'nope' not found" in waiting["message"], waiting
    assert ftj.status("orphan")["phase"] == "Pending" and ftj.cond("orphan", "Failed")["status"] == "False"
    assert ftj.cond("orphan", "Stalled")["status"] == "False" and ftj.jobs("orphan") == []
    for name, reason, words in (
        ("after-broken", "ReferenceFailed", "'broken' failed"),
        ("ping", "ReferenceCycle", "cycle"),
        ("pong", "ReferenceCycle", "cycle"),
    ):
        # ping waits (ReferenceNotFound) when it is reconciled before pong exists; pong's creation wakes it
        # (chains.Dependents) and the verdict becomes the cycle, whatever the order
        failed = wait_for(
            lambda n=name, r=reason: (
                (c := ftj.cond(n, "Failed")).get("status") == "True" and c.get("reason") == r and c
            ),
            60,
            what=f"{name} Failed with {reason}",
        )
        assert failed["reason"] == reason and words in failed["message"], failed
        assert ftj.status(name)["phase"] == "Failed" and ftj.jobs(name) == []
    events = {e.reason for e in ftj.events("orphan")}
    assert "ReferenceNotFound" in events
    # The missing job appears and succeeds: the orphan stops waiting and starts from its result.
    ftj.create(tiny_job("nope"))
    ftj.wait_phase("nope", "Succeeded", 60)
    report_result(ftj, "nope", "s3://bucket/nope")
    wait_for(lambda: ftj.jobs("orphan"), 30, what="the orphan's trainer Job once its parent exists")
    wait_for(
        lambda: ftj.cond("orphan", "WaitingForModel")["status"] == "False", 10, what="the orphan's wait ended"
    )
    assert ftj.cond("orphan", "WaitingForModel")["reason"] == "ModelReady"
    assert ftj.cond("orphan", "Failed")["status"] == "False"


EXAMPLES = example_docs()
# examples with chained FineTuneJobs (the other examples run one by one in test_finetunejob_cluster.py)
CHAIN_FILES = sorted({path for path, doc in EXAMPLES if referenced_names(doc)})


@pytest.mark.usefixtures("test_pvs")
@pytest.mark.parametrize("path", CHAIN_FILES)
def test_chained_examples_run_stage_by_stage(ftj: FTJ, path):
    docs = [copy.deepcopy(doc) for p, doc in EXAMPLES if p == path]
    claims: set[str] = set()
    for doc in docs:  # the stages of a pipeline share claims: make each one once
        mine = set(
            pvc_claims(validate_document({**doc, "metadata": {**doc["metadata"], "namespace": ftj.ns}}).obj)
        )
        if not mine <= claims:
            _prepare_references(ftj, doc)
            claims |= mine
    for doc in docs:
        ftj.create(doc)
    for doc in docs:  # in file order: a stage starts only once the ones it refers to have their results
        name = doc["metadata"]["name"]
        wait_for(lambda n=name: ftj.jobs(n), 60, what=f"the trainer Job of {name}")
        ftj.wait_phase(name, "Succeeded", 60)
        children = [d["metadata"]["name"] for d in docs if name in referenced_names(d)]
        assert all(ftj.jobs(child) == [] for child in children), (
            f"a stage after {name} started before its result"
        )
        for child in children:
            waiting = ftj.cond(child, "WaitingForModel")
            assert waiting.get("status") == "True" and f"'{name}'" in waiting["message"], waiting
        uri = doc["spec"]["output"]["uri"]
        kind = "reward-model" if doc["spec"].get("objective", {}).get("type") == "reward" else "adapter"
        merged = {"mergedUri": f"{uri}/merged"} if doc["spec"]["output"].get("mergeAdapter") else {}
        report_result(ftj, name, uri, kind, **merged)
        chain = trainer_config(ftj, name)["runtime"].get("chain") or {"parents": []}
        assert {p["name"] for p in chain["parents"]} >= referenced_names(doc)
