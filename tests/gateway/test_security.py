"""Security by the cluster: every route, tried by callers who must be refused, refuses them and creates
nothing; RBAC decides at once (a new RoleBinding works on the next request); the gateway's own identity
has the chart's least privilege; no token reaches the gateway's log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai
import pytest

from kubetune.gateway import create
from tests.gateway.helpers import (
    GROUP,
    VERSION,
    chat_lines,
    grant,
    list_finetunejobs,
    new_service_account,
    service_account_token,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def routes(sdk, file_id: str, job_id: str) -> dict[str, Callable[[], Any]]:
    """Every route of the gateway, as the SDK calls it."""
    jobs = sdk.fine_tuning.jobs
    return {
        "POST /files": lambda: sdk.files.create(file=("x.jsonl", chat_lines(2)), purpose="fine-tune"),
        "GET /files": lambda: sdk.files.list(),
        "GET /files/{id}": lambda: sdk.files.retrieve(file_id),
        "GET /files/{id}/content": lambda: sdk.files.content(file_id),
        "DELETE /files/{id}": lambda: sdk.files.delete(file_id),
        "POST /fine_tuning/jobs": lambda: jobs.create(model="tiny", training_file=file_id),
        "GET /fine_tuning/jobs": lambda: jobs.list(),
        "GET /fine_tuning/jobs/{id}": lambda: jobs.retrieve(job_id),
        "POST /fine_tuning/jobs/{id}/cancel": lambda: jobs.cancel(job_id),
        "POST /fine_tuning/jobs/{id}/pause": lambda: jobs.pause(job_id),
        "POST /fine_tuning/jobs/{id}/resume": lambda: jobs.resume(job_id),
        "GET /fine_tuning/jobs/{id}/events": lambda: jobs.list_events(job_id),
        "GET /fine_tuning/jobs/{id}/checkpoints": lambda: jobs.checkpoints.list(job_id),
        "GET /models": lambda: sdk.models.list(),
    }


PATHS = {  # the same routes for a raw HTTP request without any Authorization header
    "POST /files": ("POST", "/v1/files"),
    "GET /files": ("GET", "/v1/files"),
    "GET /files/{id}": ("GET", "/v1/files/{file}"),
    "GET /files/{id}/content": ("GET", "/v1/files/{file}/content"),
    "DELETE /files/{id}": ("DELETE", "/v1/files/{file}"),
    "POST /fine_tuning/jobs": ("POST", "/v1/fine_tuning/jobs"),
    "GET /fine_tuning/jobs": ("GET", "/v1/fine_tuning/jobs"),
    "GET /fine_tuning/jobs/{id}": ("GET", "/v1/fine_tuning/jobs/{job}"),
    "POST /fine_tuning/jobs/{id}/cancel": ("POST", "/v1/fine_tuning/jobs/{job}/cancel"),
    "POST /fine_tuning/jobs/{id}/pause": ("POST", "/v1/fine_tuning/jobs/{job}/pause"),
    "POST /fine_tuning/jobs/{id}/resume": ("POST", "/v1/fine_tuning/jobs/{job}/resume"),
    "GET /fine_tuning/jobs/{id}/events": ("GET", "/v1/fine_tuning/jobs/{job}/events"),
    "GET /fine_tuning/jobs/{id}/checkpoints": ("GET", "/v1/fine_tuning/jobs/{job}/checkpoints"),
    "GET /models": ("GET", "/v1/models"),
}
WRITES = ("POST /files", "DELETE /files/{id}", "POST /fine_tuning/jobs", "POST /fine_tuning/jobs/{id}/cancel",
          "POST /fine_tuning/jobs/{id}/pause", "POST /fine_tuning/jobs/{id}/resume")  # fmt: skip


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except openai.APIStatusError as error:
        return error.status_code
    return 200


def raw_status(url: str, method: str) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
        assert body["error"]["code"] == "invalid_api_key" and "bearer token" in body["error"]["message"]
        return error.code


@pytest.mark.timeout(600)
def test_every_route_refuses_who_it_must_and_a_refused_caller_creates_nothing(kube, gateway, team):
    from kubernetes import client

    alice = team.client(max_retries=0)
    file = alice.files.create(file=("d.jsonl", chat_lines(4)), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    ns = team.namespace
    other = kube.new_namespace("gw")  # alice has no Role there
    new_service_account(kube.api, ns, "mallory")  # a valid token, no RBAC at all
    new_service_account(kube.api, ns, "bob")  # may read, may not write
    grant(kube.api, ns, (ns, "bob"), ["get", "list"])
    grant(kube.api, ns, (ns, "bob"), ["list"], "modelserves")
    mallory = service_account_token(kube.api, ns, "mallory")
    bob = service_account_token(kube.api, ns, "bob")
    core = client.CoreV1Api(kube.api)
    foreign = core.create_namespaced_service_account_token("alice", ns, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=["https://not-this-cluster.example"], expiration_seconds=600),
    )).status.token  # fmt: skip
    before = (
        sorted(j["metadata"]["name"] for j in list_finetunejobs(kube, ns)),
        sorted(f.id for f in alice.files.list()),
    )
    tally: Counter[tuple[str, str]] = Counter()
    table: list[tuple[str, int, int, int]] = []

    def expect(who: str, status: int, got: dict[str, int]) -> None:
        wrong = {route: code for route, code in got.items() if code != status}
        assert not wrong, f"{who}: expected {status} everywhere, got {wrong}"
        table.append((who, len(got), len(got) - len(wrong), status))
        tally[(who, "tried")] += len(got)

    base = gateway.url
    expect("no Authorization header", 401, {
        route: raw_status(base + path.format(file=file.id, job=job.id), method) for route, (method, path) in PATHS.items()
    })  # fmt: skip
    for who, token, namespace, status in (
        ("a token that is not a Kubernetes token", "sk-not-a-kubernetes-token", ns, 401),
        ("a token for another audience", foreign, ns, 401),
        ("a valid token without RBAC", mallory, ns, 403),
        ("alice, in a namespace where she has no Role", team.token, other, 403),
    ):
        sdk = gateway.client(token, namespace, max_retries=0)
        expect(who, status, {route: status_of(call) for route, call in routes(sdk, file.id, job.id).items()})
    reader = gateway.client(bob, ns, max_retries=0)
    writes = {route: call for route, call in routes(reader, file.id, job.id).items() if route in WRITES}
    expect("a reader (get, list) writing", 403, {route: status_of(call) for route, call in writes.items()})
    reads = {
        route: status_of(call)
        for route, call in routes(reader, file.id, job.id).items()
        if route not in WRITES
    }
    assert set(reads.values()) == {200}, reads

    # Nothing was created, changed or deleted by a refused caller.
    after = (
        sorted(j["metadata"]["name"] for j in list_finetunejobs(kube, ns)),
        sorted(f.id for f in alice.files.list()),
    )
    assert after == before and list_finetunejobs(kube, other) == []
    obj = client.CustomObjectsApi(kube.api).get_namespaced_custom_object(
        GROUP, VERSION, ns, "finetunejobs", job.id
    )
    assert obj["spec"].get("suspend") is False and create.ANN_CANCELLED not in obj["metadata"]["annotations"]
    print("\n| caller | requests | refused as expected | status |")
    for who, tried, refused, status in table:
        print(f"| {who} | {tried} | {refused} | {status} |")
    print(f"total: {sum(t for _, t, _, _ in table)} tried, {sum(r for _, _, r, _ in table)} refused; FineTuneJobs "
          f"{len(before[0])} before and after, files {len(before[1])} before and after")  # fmt: skip

    # RBAC decides at once: a refusal is not cached, so a new RoleBinding works on the next request.
    intruder = gateway.client(mallory, ns, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="may not create finetunejobs.kubetune.io"):
        intruder.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    grant(kube.api, ns, (ns, "mallory"), ["create"])
    made = intruder.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    assert made.status == "validating_files"

    # No token (nor a piece of one) in the gateway's log.
    log = gateway.log_text()
    for token in (team.token, mallory, bob, foreign):
        assert token[-24:] not in log
    assert "Bearer" not in log
    kube.delete_namespace(other)


def can(
    kube, user: str, verb: str, group: str, resource: str, namespace: str | None = "default", sub: str = ""
) -> bool:
    from kubernetes import client

    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": sub}
    if namespace:
        attributes["namespace"] = namespace
    review = client.AuthorizationV1Api(kube.api).create_subject_access_review(
        {"spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": attributes}}
    )
    return bool(review.status.allowed)


def test_the_gateway_runs_with_least_privilege(kube, gateway_identity):
    user = f"system:serviceaccount:{gateway_identity.namespace}:{gateway_identity.service_account}"
    allowed = [
        ("create", "authentication.k8s.io", "tokenreviews", None),
        ("create", "authorization.k8s.io", "subjectaccessreviews", None),
        *((verb, GROUP, "finetunejobs", "team-x") for verb in ("get", "list", "create", "patch")),
        ("list", GROUP, "modelserves", "team-x"),
        ("list", "", "events", "team-x"),
    ]
    denied = [
        ("delete", GROUP, "finetunejobs", "team-x"),
        ("update", GROUP, "finetunejobs", "team-x"),
        ("create", GROUP, "modelserves", "team-x"),
        ("get", "", "secrets", "team-x"),
        ("list", "", "secrets", "team-x"),
        ("create", "", "pods", "team-x"),
        ("create", "rbac.authorization.k8s.io", "rolebindings", "team-x"),
        ("impersonate", "", "users", None),
        ("create", "", "serviceaccounts", "team-x"),
    ]
    for verb, group, resource, namespace in allowed:
        assert can(kube, user, verb, group, resource, namespace), (verb, group, resource)
    for verb, group, resource, namespace in denied:
        assert not can(kube, user, verb, group, resource, namespace), (verb, group, resource)
    assert not can(kube, user, "patch", GROUP, "finetunejobs", "team-x", sub="status")
