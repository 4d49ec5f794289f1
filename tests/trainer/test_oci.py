"""oci:// results against a real registry (the CNCF distribution registry of hack/registry, with htpasswd
accounts) on loopback: a local training run pushes its adapter as a ModelPack artifact with oras; crane, a
second client, reads the manifest, config and blobs back, and olot (another implementation of the ModelPack
types) checks the media types and the config; the artifact pulls back byte for byte and trains a next model;
refusals (401, 403 from a fault injector, an existing tag, an unreachable registry) keep the result on its
storage and say what to change."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import parse_uri
from kubetune_trainer import modelpack, oci, publish
from kubetune_trainer.train import run_training
from tests.support.oci_registry import (
    OCIRegistry,
    RefusingProxy,
    crane,
    crane_bytes,
    docker_config_auth,
    free_port,
)

from .toy import job_config

pytestmark = pytest.mark.trainer
USER, PASSWORD = "kubetune", "push-secret"
REPO = "kubetune/capitals"


def file_hashes(folder: Path, files: list[str]) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    server = OCIRegistry(root, users={USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth(registry, tmp_path_factory) -> Path:
    return registry.docker_config(tmp_path_factory.mktemp("auth") / "config.json", USER, PASSWORD)


@pytest.fixture(scope="module")
def oci_env(registry, auth):
    """The pod's environment for an oci:// output: the plain-HTTP registry and the mounted credentials."""
    env = {oci.ENV_PLAIN_HTTP: registry.host, oci.ENV_AUTH_FILE["output"]: str(auth),
           oci.ENV_AUTH_FILE["model"]: str(auth)}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def oci_job(tmp_path, assets, datasets_dir, registry, tag, *, name="capitals", out="out", **output):
    return job_config(
        tmp_path, assets["llama"], datasets_dir / "capitals.jsonl", name=name, out_name=out,
        output={"uri": f"oci://{registry.host}/{REPO}:{tag}", **output},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pushed(assets, datasets_dir, registry, oci_env, tmp_path_factory):
    """One real local training run whose output is oci://: (config, result)."""
    config = oci_job(tmp_path_factory.mktemp("run"), assets, datasets_dir, registry, "v1")
    outcome = run_training(config)
    return config, outcome.result


def test_a_local_run_pushes_its_adapter_as_a_modelpack_artifact(pushed, registry, auth):
    from olot.modelpack import Model
    from olot.modelpack import const as olot

    config, result = pushed
    storage = Path(config.runtime.output_dir)
    digest = result["digest"]
    assert result["uri"] == f"oci://{registry.host}/{REPO}:v1@{digest}"
    assert result["storageUri"] == f"file://{storage}"
    assert "publishError" not in result
    assert (storage / "_SUCCESS").exists() and (storage / "adapter_model.safetensors").exists()

    # crane, another client, sees the same digest under the tag, and the manifest a ModelPack artifact has.
    ref = f"{registry.host}/{REPO}:v1"
    assert crane(registry.host, "digest", ref, auth=auth).strip() == digest
    manifest = json.loads(crane(registry.host, "manifest", ref, auth=auth))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == olot.ARTIFACTTYPEMODELMANIFEST
    assert manifest["config"]["mediaType"] == olot.MEDIATYPEMODELCONFIG
    by_path = {layer["annotations"]["org.cncf.model.filepath"]: layer for layer in manifest["layers"]}
    kinds = {path: layer["mediaType"] for path, layer in by_path.items()}
    assert kinds["adapter_model.safetensors"] == olot.MEDIATYPEMODELWEIGHT
    assert kinds["adapter_config.json"] == olot.MEDIATYPEMODELWEIGHTCONFIG
    assert kinds["tokenizer.json"] == olot.MEDIATYPEMODELWEIGHTCONFIG
    assert kinds["lineage.json"] == kinds["README.md"] == olot.MEDIATYPEMODELDOC
    # every file of the result and nothing else: no checkpoints, no completion marker, no record of the push
    on_storage = {p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()}
    assert set(by_path) == {
        f
        for f in on_storage
        if not f.startswith("checkpoints/") and f not in ("_SUCCESS", "publication.json")
    }

    # The config is what the ModelPack schema allows (olot's model of it forbids anything else) and lists
    # the layers' DiffIDs (uncompressed tars: their digests).
    model = Model.model_validate_json(crane(registry.host, "config", ref, auth=auth))
    assert model.modelfs.diffIds == [layer["digest"] for layer in manifest["layers"]]
    assert model.config.format == "safetensors"
    assert model.config.precision == "float32"
    assert model.descriptor.name == "capitals" and model.descriptor.version == "v1"

    # A layer is a tar of exactly that file, byte for byte.
    weights = by_path["adapter_model.safetensors"]
    raw = crane_bytes(registry.host, "blob", f"{registry.host}/{REPO}@{weights['digest']}", auth=auth)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == weights["digest"]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (member,) = tar.getmembers()
        assert member.name == "adapter_model.safetensors" and member.mtime == 0 and member.mode == 0o644
        assert tar.extractfile(member).read() == (storage / "adapter_model.safetensors").read_bytes()

    # The lineage travels as annotations and lineage.json; the storage's lineage.json records the push.
    notes = manifest["annotations"]
    assert notes["io.kubetune.run-id"] == config.runtime.run_id
    assert notes["io.kubetune.dataset.digest"] == result["datasetDigest"]
    assert notes["io.kubetune.result-kind"] == "adapter"
    assert json.loads((storage / "publication.json").read_text())["oci"]["digest"] == digest


def test_the_artifact_pulls_back_byte_for_byte_and_trains_a_next_model(
    pushed, registry, auth, oci_env, assets, datasets_dir, tmp_path
):
    config, result = pushed
    storage = Path(config.runtime.output_dir)
    files = modelpack.result_files(storage)
    pulled = oci.pull(result["uri"], tmp_path / "pulled", auth_path=str(auth))
    assert pulled.digest == result["digest"]
    assert "lineage.json" in files and "publication.json" not in files
    assert file_hashes(tmp_path / "pulled", files) == file_hashes(storage, files)
    assert oci.pulled_digest(tmp_path / "pulled") == result["digest"]

    # A digest that is not the tag's: the registry has no such manifest.
    other = "sha256:" + "0" * 64
    with pytest.raises(oci.OCIError, match="does not exist"):
        oci.pull(f"oci://{registry.host}/{REPO}@{other}", tmp_path / "nothing", auth_path=str(auth))

    # Starting from a published model: the tiny Llama pushed as a full model, then model.uri: oci://...
    base = oci.push(
        f"oci://{registry.host}/kubetune/tiny-llama:base", Path(assets["llama"]),
        lineage={"resultKind": "full", "task": "causal-lm"}, name="tiny-llama", auth_path=str(auth),
    )  # fmt: skip
    follow = job_config(
        tmp_path, base.uri, datasets_dir / "capitals.jsonl", name="follow",
        model={"uri": base.uri}, output={"uri": f"oci://{registry.host}/{REPO}:follow"},
    )  # fmt: skip
    outcome = run_training(follow)
    assert outcome.result["baseModelRevision"] == base.digest  # the digest is the base's revision
    assert outcome.result["uri"].startswith(f"oci://{registry.host}/{REPO}:follow@sha256:")
    lineage = json.loads((Path(follow.runtime.output_dir) / "lineage.json").read_text())
    assert lineage["baseModel"] == {**lineage["baseModel"], "uri": base.uri, "resolvedRevision": base.digest}


def test_a_refused_push_keeps_the_result_and_says_what_to_change(
    assets, datasets_dir, registry, oci_env, tmp_path, monkeypatch
):
    wrong = registry.docker_config(tmp_path / "wrong.json", USER, "not-the-password")
    monkeypatch.setenv(oci.ENV_AUTH_FILE["output"], str(wrong))
    config = oci_job(tmp_path, assets, datasets_dir, registry, "refused", name="refused")
    result = run_training(config).result

    error = result["publishError"]
    assert error["reason"] == "PushRefused"
    assert "401 Unauthorized" in error["message"] and "output.secretRef" in error["message"]
    storage = Path(config.runtime.output_dir)
    assert result["uri"] == f"file://{storage}" and f"kept at file://{storage}" in error["message"]
    assert "digest" not in result
    # nothing trained is lost: the result is complete on its storage
    assert (storage / "_SUCCESS").exists() and (storage / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((storage / "publication.json").read_text())["error"]["reason"] == "PushRefused"
    # and the registry has no such tag
    tags = crane(registry.host, "ls", f"{registry.host}/{REPO}", auth=registry.docker_config(
        tmp_path / "good.json", USER, PASSWORD)).split()  # fmt: skip
    assert "refused" not in tags


def test_a_registry_that_denies_pushes_403(pushed, registry, tmp_path):
    config, _ = pushed
    storage = Path(config.runtime.output_dir)
    with RefusingProxy(registry.url) as proxy:
        os.environ[oci.ENV_PLAIN_HTTP] = f"{registry.host},{proxy.host}"
        target = f"oci://{proxy.host}/{REPO}:denied"
        proxy_auth = tmp_path / "proxy.json"  # good credentials: reads pass, writes are denied
        proxy_auth.write_text(json.dumps(docker_config_auth(proxy.host, USER, PASSWORD)))
        with pytest.raises(oci.OCIError) as caught:
            oci.push(target, storage, lineage={}, name="capitals", auth_path=str(proxy_auth))
    os.environ[oci.ENV_PLAIN_HTTP] = registry.host
    assert caught.value.reason == "PushRefused"
    assert "403 Forbidden" in caught.value.message and "DENIED" in caught.value.message


def test_an_existing_tag_is_never_moved_unless_asked(pushed, registry, auth, oci_env):
    config, result = pushed
    ref = f"{registry.host}/{REPO}:v1"
    # The same run again (a retried attempt) may push again: the same folder is the same artifact.
    again = publish.publish(config, {**result, "uri": f"file://{config.runtime.output_dir}"})
    assert "publishError" not in again and again["digest"] == result["digest"]
    first = crane(registry.host, "digest", ref, auth=auth).strip()
    assert first == again["digest"]

    # Another run (another config hash) may not move it ...
    other = config.model_copy(update={"runtime": config.runtime.model_copy(update={"run_id": "another-run"})})
    refused = publish.publish(other, {"uri": f"file://{config.runtime.output_dir}"})
    assert refused["publishError"]["reason"] == "TagExists"
    assert "output.overwriteTag" in refused["publishError"]["message"]
    assert first in refused["publishError"]["message"]
    assert crane(registry.host, "digest", ref, auth=auth).strip() == first

    # ... unless the spec says so.
    spec = other.job.spec.model_copy(
        update={"output": other.job.spec.output.model_copy(update={"overwrite_tag": True})}
    )
    moved_config = other.model_copy(update={"job": other.job.model_copy(update={"spec": spec})})
    moved = publish.publish(moved_config, {"uri": f"file://{config.runtime.output_dir}"})
    assert "publishError" not in moved
    assert crane(registry.host, "digest", ref, auth=auth).strip() == moved["digest"] != first


def test_an_unreachable_registry_fails_at_once(pushed, oci_env):
    config, _ = pushed
    host = f"127.0.0.1:{free_port()}"
    os.environ[oci.ENV_PLAIN_HTTP] = f"{oci_env[oci.ENV_PLAIN_HTTP]},{host}"
    started = time.monotonic()
    try:
        with pytest.raises(oci.OCIError) as caught:
            oci.push(f"oci://{host}/{REPO}:x", Path(config.runtime.output_dir), lineage={}, name="x")
    finally:
        os.environ[oci.ENV_PLAIN_HTTP] = oci_env[oci.ENV_PLAIN_HTTP]
    assert caught.value.reason == "RegistryUnreachable"
    assert f"cannot reach the registry {host}" in caught.value.message
    assert time.monotonic() - started < 30  # no retry loop on a refused connection


def test_a_layer_that_leaves_the_folder_is_refused(tmp_path):
    """Pulled tars are not trusted: a member outside the model folder, or a link, stops the pull."""
    for name, kind in (("../escape.json", tarfile.REGTYPE), ("/abs.json", tarfile.REGTYPE),
                       ("link.json", tarfile.SYMTYPE)):  # fmt: skip
        blob = tmp_path / "layer.tar"
        with tarfile.open(blob, "w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
        with pytest.raises(oci.TrainerError, match="not a regular file inside the folder"):
            oci._unpack(blob, modelpack.WEIGHT_CONFIG, name, tmp_path / "dest")
        assert not (tmp_path / "escape.json").exists()


def test_push_needs_a_tag(pushed):
    config, _ = pushed
    with pytest.raises(oci.OCIError, match="push to a tag"):
        oci.push("oci://registry.example.com/x@sha256:" + "0" * 64, Path(config.runtime.output_dir),
                 lineage={}, name="x")  # fmt: skip
    assert parse_uri(publish.merged_target("oci://r.example/x:v1")).tag == "v1-merged"


def test_a_result_that_failed_its_gate_is_not_pushed(pushed, registry, auth, oci_env):
    """The tag keeps the last promoted result: a result whose evaluation gate failed stays on its storage."""
    config, result = pushed
    ref = f"{registry.host}/{REPO}:v1"
    before = crane(registry.host, "digest", ref, auth=auth).strip()
    other = config.model_copy(update={"runtime": config.runtime.model_copy(update={"run_id": "gate-failed"})})
    storage = f"file://{config.runtime.output_dir}"
    kept = publish.publish(other, {"uri": storage, "promoted": False})
    assert kept["uri"] == kept["storageUri"] == storage
    assert "digest" not in kept and "publishError" not in kept
    assert json.loads((Path(config.runtime.output_dir) / "publication.json").read_text())["oci"] == {
        "skipped": "the result failed its evaluation gate"
    }
    assert crane(registry.host, "digest", ref, auth=auth).strip() == before
