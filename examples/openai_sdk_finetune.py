"""Fine-tune through kubetune's OpenAI-compatible API with the official `openai` SDK (docs/openai-api.md).

    export OPENAI_BASE_URL=http://localhost:8000/v1        # e.g. kubectl -n kubetune-system port-forward svc/kubetune-api 8000
    export OPENAI_API_KEY=$(kubectl -n team-a create token ci-bot)   # a Kubernetes token: RBAC decides
    export OPENAI_PROJECT_ID=team-a                          # the namespace (default: the token's ServiceAccount's)
    python examples/openai_sdk_finetune.py --model llama-3.1-8b [--wait]

The job is a FineTuneJob in that namespace (`kubectl get ftj`); its result is listed by `client.models.list()`
once a ModelServe serves it (fine_tuned_model is then its served name).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid

from openai import OpenAI

EXAMPLES = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is the capital of Italy?", "Rome."),
    ("What is the capital of Peru?", "Lima."),
]


def training_file() -> bytes:
    """Chat examples in OpenAI's format, one JSON object per line."""
    lines = []
    for question, answer in EXAMPLES * 4:
        messages = [
            {"role": "system", "content": "Answer with the capital city only."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a base model the gateway offers, a URI or ORG/NAME")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    args = parser.parse_args()

    client = OpenAI()  # OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_PROJECT_ID from the environment
    uploaded = client.files.create(file=("capitals.jsonl", io.BytesIO(training_file())), purpose="fine-tune")
    print(f"uploaded {uploaded.id} ({uploaded.bytes} bytes)")
    job = client.fine_tuning.jobs.create(
        model=args.model,
        training_file=uploaded.id,
        suffix="capitals",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        # The SDK retries a create whose answer was lost; with this key the retry gets the same job.
        extra_headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    print(f"created {job.id}: {job.status}")
    seen: set[str] = set()
    while args.wait:
        for event in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=50))):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{event.level}] {event.message}")
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            print(f"{job.id}: {job.status}; trained tokens {job.trained_tokens}; error {job.error}")
            print(f"served as: {job.fine_tuned_model or '(no ModelServe serves it yet)'}")
            break
        time.sleep(10)


if __name__ == "__main__":
    main()
