"""The operator and objects the API server accepted but that are not runnable as they are: it reports them
(Validated=False naming the field) and never crashes or loops silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok, pytest.mark.timeout(120)]

INVALID = Path(__file__).resolve().parents[1] / "data" / "invalid"
# One of each documented Python-only rule (tests/data/invalid/README.md, "server: -").
PYTHON_ONLY = ["ssrf-metadata-ip", "uri-pvc-dotdot", "uri-https-credentials", "serve-bad-regex"]


@pytest.mark.parametrize("case", PYTHON_ONLY)
def test_a_python_only_violation_is_validated_false_naming_the_field(kube, rel_operator, ftj: FTJ, case):
    path = INVALID / f"{case}.yaml"
    field = next(
        line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if "# expect:" in line
    )
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    doc["metadata"]["namespace"] = ftj.ns
    plural = {"FineTuneJob": "finetunejobs", "ModelServe": "modelserves"}[doc["kind"]]
    ftj.co.create_namespaced_custom_object("kubetune.io", "v1alpha1", ftj.ns, plural, doc)
    name = doc["metadata"]["name"]

    def validated():
        obj = ftj.co.get_namespaced_custom_object("kubetune.io", "v1alpha1", ftj.ns, plural, name)
        # FineTuneJob: Validated=False; ModelServe: Ready=False with reason InvalidSpec.
        return next(
            (
                c
                for c in (obj.get("status") or {}).get("conditions") or []
                if c["type"] == "Validated" or c.get("reason") == "InvalidSpec"
            ),
            None,
        )

    cond = wait_for(validated, 30, 0.3, f"{name}: a condition saying the spec is invalid")
    assert cond["status"] == "False" and field in cond["message"], cond
    assert rel_operator.healthy()


def test_a_dotted_name_runs(ftj: FTJ):
    """A legal metadata.name with dots (not a DNS-1035 label, which Services and Jobs' pods need) runs: its
    children get valid names that keep the name readable and tell owners apart with a hash."""
    from kubetune.render.finetunejob import configmap_name, job_name

    ftj.create(tiny_job("fine.tune.v2"))
    st = ftj.wait_phase("fine.tune.v2", "Succeeded", 60)
    assert st["jobName"] == job_name("fine.tune.v2") and st["jobName"].startswith("fine-tune-v2-"), st[
        "jobName"
    ]
    (job,) = ftj.jobs("fine.tune.v2")
    assert job.metadata.name == st["jobName"]
    ftj.core.read_namespaced_config_map(configmap_name("fine.tune.v2"), ftj.ns)
