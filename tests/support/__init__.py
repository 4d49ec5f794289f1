"""Test helpers: the local control plane (controlplane) and its pytest plugin (cluster)."""
