"""Retries and names: the SDK retries a create whose answer was lost; with an Idempotency-Key the retry gets
the job the first attempt made. A burst of 200 creates through a proxy that loses every third answer gives
exactly 200 FineTuneJobs; a name that is taken is a 409 that no retry repeats."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest

from kubetune.gateway import create
from tests.gateway.helpers import GROUP, VERSION, chat_lines, list_finetunejobs
from tests.gateway.lossy_proxy import LossyProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BURST = 200


def one_request_per_connection():
    return openai.DefaultHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0))


def api_jobs(kube, namespace: str) -> list[dict]:
    return [j for j in list_finetunejobs(kube, namespace)
            if (j["metadata"].get("labels") or {}).get(create.LABEL_CREATED_BY) == create.CREATED_BY_API]  # fmt: skip


@pytest.mark.timeout(600)
def test_a_burst_of_200_creates_through_lost_answers_gives_200_jobs(kube, team):
    sdk = team.client()
    data = sdk.files.create(file=("d.jsonl", chat_lines(4)), purpose="fine-tune")
    proxy = LossyProxy(int(team.gateway.url.rsplit(":", 1)[1]), every=3)
    try:
        lossy = team.gateway.client(team.token, team.namespace, base_url=proxy.url, max_retries=6,
                                    http_client=one_request_per_connection())  # fmt: skip

        # Without a key a lost answer is a duplicate: why the key exists (and what this test would catch).
        for i in range(6):
            lossy.fine_tuning.jobs.create(model="tiny", training_file=data.id, metadata={"plain": str(i)})
        assert proxy.dropped == 2
        assert len(api_jobs(kube, team.namespace)) == 8  # 6 asked for, 2 made twice

        start_seen, start_dropped = proxy.seen, proxy.dropped

        def make(i: int) -> str:
            job = lossy.fine_tuning.jobs.create(
                model="tiny", training_file=data.id, metadata={"burst": str(i)},
                extra_headers={"Idempotency-Key": f"burst-{i}"},
            )  # fmt: skip
            return job.id

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(make, range(BURST)))
    finally:
        proxy.close()
    dropped, sent = proxy.dropped - start_dropped, proxy.seen - start_seen
    assert dropped >= BURST // 3 - 1 and sent == BURST + dropped  # every lost answer was retried once
    made = [
        j
        for j in api_jobs(kube, team.namespace)
        if "burst" in j["metadata"]["annotations"][create.ANN_METADATA]
    ]
    assert len(made) == BURST, f"{len(made)} FineTuneJobs for {BURST} creates ({dropped} answers lost)"
    assert sorted(ids) == sorted(j["metadata"]["name"] for j in made) and len(set(ids)) == BURST
    keys = {j["metadata"]["annotations"][create.ANN_IDEMPOTENCY] for j in made}
    assert len(keys) == BURST
    print(
        f"\nburst: {BURST} creates, {dropped} answers lost and retried, {len(made)} FineTuneJobs, 0 duplicates"
    )


def test_a_taken_name_is_a_conflict_and_the_same_request_again_is_the_same_job(kube, team):
    from kubernetes import client

    sdk = team.client()
    data = sdk.files.create(file=("d.jsonl", chat_lines(4)), purpose="fine-tune")
    # Someone made a FineTuneJob (kubectl) under the name key-A maps to for this caller.
    taken = create.job_name(team.namespace, team.user, "key-A")
    co = client.CustomObjectsApi(kube.api)
    co.create_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": taken},
        "spec": {"model": {"uri": "hf://org/m"}, "dataset": {"uri": "hf://org/d"},
                 "output": {"uri": "pvc://models/x"}},
    })  # fmt: skip
    before = co.get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", taken)
    with pytest.raises(openai.ConflictError) as conflict:
        sdk.fine_tuning.jobs.create(
            model="tiny", training_file=data.id, extra_headers={"Idempotency-Key": "key-A"}
        )
    assert (
        conflict.value.body["code"] == "name_collision"
        and "not created by this request" in conflict.value.message
    )
    assert conflict.value.response.headers["x-should-retry"] == "false"
    after = co.get_namespaced_custom_object(GROUP, VERSION, team.namespace, "finetunejobs", taken)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # untouched

    # The same key and request again: the same job, not a new one; another request with that key: 409.
    one = sdk.fine_tuning.jobs.create(
        model="tiny", training_file=data.id, extra_headers={"Idempotency-Key": "key-B"}
    )
    again = sdk.fine_tuning.jobs.create(
        model="tiny", training_file=data.id, extra_headers={"Idempotency-Key": "key-B"}
    )
    assert again.id == one.id == create.job_name(team.namespace, team.user, "key-B")
    with pytest.raises(openai.ConflictError, match="different request"):
        sdk.fine_tuning.jobs.create(model="tiny", training_file=data.id, suffix="other",
                                    extra_headers={"Idempotency-Key": "key-B"})  # fmt: skip
    assert len(list_finetunejobs(kube, team.namespace)) == 2  # the kubectl one and key-B's

    # Two uploads of the same name are two files.
    twice = [sdk.files.create(file=("same.jsonl", chat_lines(n)), purpose="fine-tune") for n in (1, 2)]
    assert twice[0].id != twice[1].id
    assert [len(sdk.files.content(f.id).read().splitlines()) for f in twice] == [1, 2]
