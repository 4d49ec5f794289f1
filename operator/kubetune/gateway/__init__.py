"""`kubetune api`: an OpenAI-compatible fine-tuning API in front of FineTuneJobs (docs/openai-api.md).

The cluster stays the source of truth: a fine-tuning job is a FineTuneJob, a model is what a ModelServe
serves, and who may do what is decided by the cluster's RBAC (TokenReview + SubjectAccessReview). The
gateway keeps no database; uploaded training files live on a volume the trainer pods can read.

Pure modules (no I/O, no web framework, no Kubernetes client): ``errors``, ``settings``,
``training_files`` (JSONL checks), ``create`` (a create request -> a FineTuneJob manifest) and ``views``
(FineTuneJobs, Events and ModelServes -> OpenAI's objects). The shells: ``auth`` (the API server's
reviews), ``store`` (the file volume), ``app`` (the FastAPI routes) and ``server`` (uvicorn).
"""
