"""Suite-wide pytest configuration."""

# The `kube` / `namespace` fixtures and the cluster/kwok marker handling (see tests/support/cluster.py).
pytest_plugins = ["tests.support.cluster"]
