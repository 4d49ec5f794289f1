"""Fixtures of the operator tests: the CRDs, one `kubetune operator` subprocess for the session (watching
ftj-* namespaces), a namespace per test and the FineTuneJob helpers on it. The helpers themselves live in
tests/support (objects, operator, crds); the names below are imported from there."""

from __future__ import annotations

import pytest

from tests.support.crds import apply_crds, wait_served
from tests.support.objects import FTJ, example_docs, tiny_job
from tests.support.operator import Operator
from tests.support.waiting import wait_for

__all__ = ["FTJ", "Operator", "apply_crds", "example_docs", "tiny_job", "wait_for", "wait_served"]

NS_PREFIX = "ftj"  # the operator under test watches only ftj-* namespaces (other sessions may run theirs)


@pytest.fixture(scope="session")
def crds(kube):
    apply_crds(kube.api)
    return True


@pytest.fixture(scope="session")
def operator(kube, crds, tmp_path_factory):
    op = Operator(kube.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ftj_ns(kube, operator):
    """A fresh namespace the operator under test watches."""
    name = kube.new_namespace(NS_PREFIX)
    yield name
    kube.drop_pods(name)  # fake pods that never finish (outcome=run) would hold their GPUs for 120 s
    kube.delete_namespace(name)


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "operator" in request.fixturenames:
        op = request.getfixturevalue("operator")
        print("---- operator log (tail) ----\n" + op.log_tail(120))
        print("---- the operator's threads now ----\n" + op.dump_stacks())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def ftj(kube, ftj_ns) -> FTJ:
    return FTJ(kube, ftj_ns)
