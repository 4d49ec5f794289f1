"""The evaluation gate in front of serving, with real CPU training: a tiny Llama is fine-tuned twice by the
kubetune trainer (here, on the CPU), each result evaluated against its base with the real gate. The first run
improves perplexity: its FineTuneJob Succeeds and a ModelServe following it rolls it out. The second run
(a learning rate that diverges) fails its gate: the FineTuneJob ends Failed with reason EvaluationGateFailed
quoting both numbers, and the ModelServe keeps serving the first result and says why.

The operator and the ModelServe run for real (kwok runs the pods: the trainer Job's pod runs a few seconds);
the results and verdicts reach the FineTuneJob the way the trainer in the pod reports them (status.result and
status.evaluation patches, with the run id of the operator's trainer Job)."""

from __future__ import annotations

import json

import pytest

from kubetune_trainer import tiny
from kubetune_trainer.train import run_training
from tests.serve.test_cluster import GROUP, VERSION, World, ready, start_serve_operator
from tests.support.waiting import wait_for
from tests.trainer.toy import capitals_rows, corpus, job_config, write_jsonl

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.trainer]

EVALUATION = {"metrics": ["perplexity"], "compareWithBase": True,
              "gates": [{"metric": "perplexity", "maxRegression": 0.0}]}  # fmt: skip
GOOD = {"method": {"type": "full"}, "training": {"maxSteps": 24, "learningRate": 2e-3}}
DIVERGING = {"method": {"type": "full"}, "training": {"maxSteps": 8, "learningRate": 1.0}}


@pytest.fixture(scope="module")
def gate_operator(kube, tgi_server, tmp_path_factory):
    op = start_serve_operator(kube, tmp_path_factory.mktemp("gate-operator"), tgi_server.url)
    yield op
    op.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two real runs of the trainer on CPU: (result, evaluation) of the good one and of the diverging one."""
    root = tmp_path_factory.mktemp("gate")
    tokenizer = tiny.build_tokenizer(corpus(), root / "tokenizer", vocab_size=400)
    tiny.build_model("llama", tokenizer, root / "llama")
    model = root / "llama"
    data = root / "text.jsonl"
    write_jsonl(data, [{"text": r["prompt"] + r["completion"] + "."} for r in capitals_rows()])
    out = {}
    for name, spec in (("good", GOOD), ("diverging", DIVERGING)):
        config = job_config(root / name, model, data, dataset={"evalFraction": 0.25}, evaluation=EVALUATION,
                            **spec)  # fmt: skip
        outcome = run_training(config)
        lineage = json.loads((root / name / "out" / "lineage.json").read_text()) if outcome.result[
            "promoted"] else json.loads((root / name / "out" / "rejected" / config.runtime.run_id / "lineage.json")
                                        .read_text())  # fmt: skip
        out[name] = (outcome.result, lineage["evaluation"])
    return out


def job_spec(spec: dict) -> dict:
    return {
        "model": {"uri": "hf://org/tiny"},
        "dataset": {"uri": "hf://org/data", "evalFraction": 0.25},
        "resources": {"gpusPerNode": 1},
        "evaluation": EVALUATION,
        "output": {"uri": "s3://bucket/sft"},
        **spec,
    }


def report(world: World, name: str, rid: str, result: dict, evaluation: dict) -> None:
    """What the trainer in the pod of run RID writes at its end: status.evaluation, then status.result."""
    where = "s3://bucket/sft" + ("" if result["promoted"] else f"/rejected/{rid}")
    body = {
        "evaluation": {**evaluation, "configHash": rid},
        "result": {"uri": where, "kind": result["kind"], "configHash": rid, "promoted": result["promoted"],
                   "metrics": result["metrics"]},
    }  # fmt: skip
    world.co.patch_namespaced_custom_object_status(
        GROUP, VERSION, world.ns, "finetunejobs", name, {"status": body}
    )


def run_id_of_new_job(world: World, name: str, not_: str | None = None) -> str:
    from kubernetes import client

    batch = client.BatchV1Api(world.co.api_client)

    def current():
        jobs = batch.list_namespaced_job(world.ns, label_selector=f"kubetune.io/finetunejob={name}").items
        ids = [
            j.metadata.labels["kubetune.io/run-id"]
            for j in jobs
            if j.metadata.labels["kubetune.io/run-id"] != not_
        ]
        return ids[0] if ids else None

    return wait_for(current, 30, 0.1, "the trainer Job of the run")


def ftj(world: World, name: str) -> dict:
    return world.co.get_namespaced_custom_object(GROUP, VERSION, world.ns, "finetunejobs", name)


def test_a_promoted_result_rolls_out_and_a_failed_gate_keeps_the_previous_one(
    kube, gate_operator, tgi, trained
):
    world = World(kube, kube.new_namespace("ms"), gate_operator)
    good_result, good_eval = trained["good"]
    bad_result, bad_eval = trained["diverging"]
    assert good_eval["passed"] is True and bad_eval["passed"] is False  # the real gate's verdicts
    world.co.create_namespaced_custom_object(GROUP, VERSION, world.ns, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
        "metadata": {"name": "sft", "labels": {"kwok.kubetune.io/run-duration": "6s"}},
        "spec": job_spec(GOOD)})  # fmt: skip
    rid1 = run_id_of_new_job(world, "sft")
    report(world, "sft", rid1, good_result, good_eval)
    wait_for(lambda: ftj(world, "sft")["status"].get("phase") == "Succeeded", 60, 0.2, "run 1 Succeeded")
    world.serve("bot", {"model": {"fineTuneJobRef": {"name": "sft"}}, "replicas": 1,
                        "rollout": {"smokeTest": {"prompt": "hello", "maxNewTokens": 8, "expect": r"^kubetune\b"}}})  # fmt: skip
    first = world.wait("bot", ready(), "revision 1 Ready", timeout=90)
    assert first["revision"]["model"] == "s3://bucket/sft"
    rev1 = first["revision"]["hash"]

    # run 2: the same job at a learning rate that diverges
    world.co.patch_namespaced_custom_object(GROUP, VERSION, world.ns, "finetunejobs", "sft",
                                            {"spec": {"training": DIVERGING["training"]}})  # fmt: skip
    rid2 = run_id_of_new_job(world, "sft", not_=rid1)
    report(world, "sft", rid2, bad_result, bad_eval)
    status = wait_for(lambda: (s := ftj(world, "sft")["status"]).get("phase") == "Failed" and s, 60, 0.2,
                      "run 2 Failed")  # fmt: skip
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "EvaluationGateFailed"
    [metric] = bad_eval["metrics"]
    both = f"perplexity {metric['result']:.4g} (base {metric['base']:.4g})"
    assert (
        both in failed["message"]
        and f"kept at s3://bucket/sft/rejected/{rid2}, not promoted" in failed["message"]
    )

    # the ModelServe keeps serving revision 1 and says why
    held = world.wait("bot", lambda s: any(c["type"] == "Ready" and c.get("reason") == "ResultNotPromoted"
                                           for c in s.get("conditions") or []), "ResultNotPromoted")  # fmt: skip
    assert held["revision"]["hash"] == rev1 and world.template_revision("bot") == rev1
    degraded = world.cond("bot", "Degraded")
    assert degraded["status"] == "True" and degraded["message"].startswith(f"still serving revision {rev1}; ")
    assert both in degraded["message"]
    assert any(e[1] == "ResultNotPromoted" for e in world.events("bot"))
    kube.delete_namespace(world.ns)
