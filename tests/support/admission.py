"""Admission policies for the tests: a ValidatingAdmissionPolicy that denies what a test names, as a cluster
admin would set one up, to see what the operator does with a refused child."""

from __future__ import annotations

import contextlib

from kubernetes import client

from tests.support.waiting import wait_for


@contextlib.contextmanager
def denying_policy(kube, ns: str, group: str, resource: str, expression: str, message: str, probe):
    """A ValidatingAdmissionPolicy + binding that deny RESOURCE objects matching EXPRESSION in NS;
    enforced (PROBE, a dry-run create, is denied) when the block starts, gone when it ends."""
    adm = client.AdmissionregistrationV1Api(kube.api)
    name = f"deny-{resource}-{ns}"
    adm.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [group],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": [resource],
                        }
                    ]
                },
                "validations": [{"expression": expression, "message": message}],
            },
        }
    )
    adm.create_validating_admission_policy_binding(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            },
        }
    )

    def enforced() -> bool:  # the API server loads policies asynchronously
        try:
            probe()
        except client.ApiException as exc:
            return message in (exc.body or "")
        return False

    try:
        wait_for(enforced, 30, 0.2, "the ValidatingAdmissionPolicy to be enforced")
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            adm.delete_validating_admission_policy_binding(name)
        with contextlib.suppress(client.ApiException):
            adm.delete_validating_admission_policy(name)
