"""Suite-wide pytest configuration."""

# The `kube` / `namespace` fixtures and the cluster/kwok marker handling (see tests/support/cluster.py);
# the `real_node` fixture: a containerd + kubelet node on the local control plane (tests/support/realnode_pytest.py).
pytest_plugins = ["tests.support.cluster", "tests.support.realnode_pytest"]
