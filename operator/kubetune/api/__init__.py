"""The kubetune API: pydantic models that are the single source of truth for the CRDs.

No I/O, no kopf, no Kubernetes client here (docs/architecture.md, "Imports go one way").
"""
