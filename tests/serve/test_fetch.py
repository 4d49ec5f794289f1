"""The init container that copies an s3:// model into a serving pod runs the trainer's own S3 download
(``kubetune-trainer fetch``): run the rendered command against a real S3-compatible server on loopback
(moto in server mode) and check the files land where the serving container reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import ModelServe
from kubetune.reconcile import sources
from kubetune.render import modelserve as r


@pytest.fixture(scope="module")
def s3_env():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {
        "AWS_ACCESS_KEY_ID": "kubetune-test",
        "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_REGION": "eu-central-1",
    }
    server.stop()


def test_the_rendered_init_container_fetches_the_model_prefix(s3_env, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name=s3_env["AWS_REGION"],
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    s3.put_object(Bucket="models", Key="sft/c1/config.json", Body=b'{"model_type": "gpt2"}')
    s3.put_object(Bucket="models", Key="sft/c1/tokenizer/vocab.json", Body=b"{}")

    ms = ModelServe.model_validate(
        {
            "metadata": {"name": "bot", "namespace": "team"},
            "spec": {"model": {"uri": "s3://models/sft/c1", "secretRef": {"name": "s3"}}},
        }
    )
    res = sources.resolve_sources(ms, {})
    tpl = r.render_pod_template(ms, res, image="tgi", trainer_image="trainer", revision_hash_="x")
    (init,) = tpl["spec"]["initContainers"]
    assert init["command"][:2] == ["kubetune-trainer", "fetch"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3"}}]

    # Run it here: the same program, with the Secret's keys as env and the emptyDir under tmp_path.
    uri, dest = init["command"][2:]
    local = tmp_path / dest.lstrip("/")
    env = {**os.environ, **s3_env}
    out = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.cli", "fetch", uri, str(local)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (local / "config.json").read_text() == '{"model_type": "gpt2"}'
    assert (local / "tokenizer" / "vocab.json").exists()
    assert dest == f"{r.MODELS_DIR}/model"
    env_vars = {e["name"]: e.get("value") for e in tpl["spec"]["containers"][0]["env"]}
    assert env_vars["MODEL_ID"] == dest

    # A missing prefix fails the init container with the URI in the message.
    missing = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.cli", "fetch", "s3://models/nope", str(tmp_path / "x")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "s3://models/nope" in missing.stderr
    assert Path(local).is_dir()
