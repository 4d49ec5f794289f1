"""Pure functions: a validated object -> the manifests of its children. No client, no kopf."""
