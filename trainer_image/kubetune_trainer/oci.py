"""Push a result folder to an OCI registry as a ModelPack artifact, and pull one back, with the `oras` client.

oras (oras-py) speaks the distribution protocol: its Registry uploads blobs (monolithic, or chunked for large
ones), the manifest, downloads blobs, and authenticates from a docker config file (a kubernetes.io/
dockerconfigjson Secret's ``.dockerconfigjson``, as image pull secrets are). What this module adds:

- one look at ``/v2/`` first: an unreachable registry fails at once (oras retries a failed request five times
  over about two minutes, right for a blip, not for a wrong host), and the challenge says which oras auth
  backend fits (``Basic``: credentials on every request; ``Bearer``: oras' token flow);
- a push never moves a tag another push made unless asked (``overwrite``); a retried attempt of the same run
  (same run id and FineTuneJob uid in the manifest's annotations) may replace its own push;
- refusals become OCIError with a reason (PushRefused, TagExists, RegistryUnreachable, ...) and a message that
  names the field to change;
- pulls check every blob's digest (and the manifest's, when the URI pins one) and unpack the ModelPack layers
  without trusting their paths.

Plain-HTTP registries (a test bed's, an in-cluster one without TLS) are named in $KUBETUNE_OCI_PLAIN_HTTP
(comma-separated host[:port]); every other registry is spoken to over HTTPS (a private CA through
$REQUESTS_CA_BUNDLE).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.v1alpha1 import ParsedURI, parse_uri
from kubetune.api.v1alpha1.trainerconfig import (
    ENV_MODEL_REGISTRY_AUTH,
    ENV_OCI_PLAIN_HTTP,
    ENV_OUTPUT_REGISTRY_AUTH,
)
from kubetune.api.v1alpha1.uris import oci_uri

from . import modelpack
from .errors import TrainerError

log = logging.getLogger("kubetune_trainer.oci")

ENV_PLAIN_HTTP = ENV_OCI_PLAIN_HTTP
# The docker config file with a role's registry credentials (the operator mounts the role's Secret there);
# else $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
ENV_AUTH_FILE = {"output": ENV_OUTPUT_REGISTRY_AUTH, "model": ENV_MODEL_REGISTRY_AUTH}
MANIFEST_ACCEPT = ", ".join(
    (modelpack.MANIFEST_MEDIA_TYPE, "application/vnd.oci.image.index.v1+json",
     "application/vnd.docker.distribution.manifest.v2+json")
)  # fmt: skip
CHUNKED_ABOVE = 64 * 1024**2  # bigger blobs go up in chunks (a monolithic PUT holds the blob in memory)
CHUNK_SIZE = 64 * 1024**2
TIMEOUT = (10.0, 300.0)  # connect, read (a large chunk or a slow registry)
PING_TIMEOUT = (10.0, 30.0)
MARKER = ".kubetune-oci.json"  # in a pulled folder: what was pulled


class OCIError(TrainerError):
    """A registry refused or failed an operation; REASON is one of publishing.PublishFailure's words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Pushed:
    uri: str  # oci://REGISTRY/REPO:TAG@sha256:...
    digest: str
    layers: int
    size: int  # bytes of all blobs


@dataclass(frozen=True)
class Pulled:
    digest: str
    path: Path
    files: int
    size: int


def plain_http_registries() -> set[str]:
    return {h.strip() for h in os.environ.get(ENV_PLAIN_HTTP, "").split(",") if h.strip()}


def auth_file(role: str) -> str | None:
    """The docker config file with the registry credentials for ROLE (output or model), if any."""
    explicit = os.environ.get(ENV_AUTH_FILE.get(role, ""), "")
    if explicit:
        return explicit
    if os.environ.get("DOCKER_CONFIG"):
        candidate = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
        return str(candidate) if candidate.exists() else None
    candidate = Path.home() / ".docker" / "config.json"
    return str(candidate) if candidate.exists() else None


def _registry_error(response: Any) -> str:
    """The registry's own words from an error response (the distribution spec's {"errors": [...]})."""
    try:
        errors = response.json().get("errors") or []
        words = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        words = ""
    return words or (response.reason or "")


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 300 else text[:300] + "..."


@dataclass
class Client:
    """An oras Registry set up for one registry and repository."""

    parsed: ParsedURI
    registry: Any  # oras.provider.Registry
    container: Any  # oras.container.Container
    base: str  # http(s)://HOST
    has_credentials: bool
    auth_path: str | None

    def manifest_url(self, reference: str) -> str:
        return f"{self.registry.prefix}://{self.container.manifest_url(reference)}"

    def upload_url(self) -> str:
        return f"{self.registry.prefix}://{self.container.upload_blob_url()}"

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """oras' request (its auth handling and retries); its "cannot authenticate" error becomes a response-
        less refusal the callers report as 401."""
        try:
            return self.registry.do_request(url, method, **kwargs)
        except ValueError as error:
            if "authentication" in str(error):
                return None
            raise


def _timeout_adapter():
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        """Every request of the session gets TIMEOUT unless it names one (oras' requests name none)."""

        def send(self, request, **kwargs):  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = TIMEOUT
            return super().send(request, **kwargs)

    return TimeoutAdapter()


def _credentials(host: str, path: str | None, refused: str, secret_field: str) -> bool:
    """Whether the docker config at PATH has credentials for HOST (inline, or through a credential helper)."""
    if not path:
        return False
    import oras.auth.utils
    import oras.utils

    try:
        config = oras.auth.utils.load_configs([path])
    except (OSError, ValueError) as error:
        raise OCIError(
            refused, f"{secret_field}: cannot read the registry credentials ({path}): {_short(error)}"
        ) from None
    names = list(oras.utils.iter_localhosts(host))
    return any(
        name in (config.get("auths") or {}) or name in (config.get("credHelpers") or {}) for name in names
    ) or bool(config.get("credsStore"))


def connect(parsed: ParsedURI, auth_path: str | None, field: str, secret_field: str, action: str) -> Client:
    """A client for PARSED's registry and repository (to push or pull: ACTION); OCIError (RegistryUnreachable)
    when it does not answer."""
    import oras.container
    import oras.provider
    import requests

    host = parsed.registry
    insecure = host in plain_http_registries()
    base = f"{'http' if insecure else 'https'}://{host}"
    ping = requests.Session()
    try:
        response = ping.get(f"{base}/v2/", timeout=PING_TIMEOUT)
    except requests.exceptions.SSLError as error:
        raise OCIError(
            "RegistryUnreachable",
            f"{field}: TLS with {host} failed ({_short(error)}); give the pods the registry's CA "
            f"(REQUESTS_CA_BUNDLE), or, for a registry that speaks plain HTTP, name it in {ENV_PLAIN_HTTP}",
        ) from None
    except requests.RequestException as error:
        raise OCIError(
            "RegistryUnreachable",
            f"{field}: cannot reach the registry {host} over {base.split(':')[0]} ({_short(error)}); check the "
            "registry host and port, and that the pods can reach it",
        ) from None
    finally:
        ping.close()
    if response.status_code not in (200, 401):
        raise OCIError(
            "RegistryUnreachable",
            f"{field}: {host} does not answer as an OCI registry (GET /v2/: HTTP {response.status_code}); check "
            "the registry host and port",
        )
    challenge = response.headers.get("WWW-Authenticate", "")
    backend = "basic" if challenge.lower().startswith("basic") else "token"
    registry = oras.provider.Registry(hostname=host, insecure=insecure, auth_backend=backend)
    adapter = _timeout_adapter()
    registry.session.mount("http://", adapter)
    registry.session.mount("https://", adapter)
    # oras' name parser guesses the registry from the first component like docker (a name without "." or ":"
    # is a Docker Hub namespace); the URI says it exactly, so the parts are set as parsed.
    container = oras.container.Container("kubetune:parsed", registry=host)
    namespace, _, repository = parsed.repository.rpartition("/")
    container.namespace, container.repository = namespace or None, repository
    container.tag, container.digest = parsed.tag or "latest", parsed.digest
    refused = "PushRefused" if action == "push" else "PullRefused"
    has_credentials = _credentials(host, auth_path, refused, secret_field)
    if has_credentials:
        registry.auth.load_configs(container, configs=[auth_path])
        if backend == "basic":
            # Basic auth goes with every request of the session, as docker sends it: no request is sent twice
            # (first to learn that it needs auth), a large upload included. requests drops the header on a
            # redirect to another host (a blob store's signed URL).
            registry.session.headers["Authorization"] = registry.auth.get_auth_header()["Authorization"]
    elif response.status_code == 401 and backend == "basic":
        raise OCIError(
            refused,
            f"{field}: the registry {host} asks for credentials and there are none for it: set {secret_field} to a "
            f"kubernetes.io/dockerconfigjson Secret with an entry for {host}",
        )
    return Client(parsed, registry, container, base, has_credentials, auth_path)


def _refusal(client: Client, response: Any, action: str, secret_field: str, field: str) -> OCIError:
    host, repository = client.parsed.registry, client.parsed.repository
    status = getattr(response, "status_code", 401)
    words = _registry_error(response) if response is not None else "authentication failed"
    reason = "PushRefused" if action == "push" else "PullRefused"
    if status == 401:
        why = (
            f"the registry {host} refused the credentials ({words})"
            if client.has_credentials
            else f"the registry {host} needs credentials and {secret_field} gives none for it ({words})"
        )
        return OCIError(
            reason,
            f"{field}: {action} refused with 401 Unauthorized: {why}; fix the kubernetes.io/dockerconfigjson "
            f"Secret named in {secret_field} (an entry for {host} with a user that may {action})",
        )
    if status == 403:
        return OCIError(
            reason,
            f"{field}: {action} refused with 403 Forbidden ({words}): the credentials in {secret_field} may not "
            f"{action} {repository} on {host}; grant that, or choose a repository they may {action} in {field}",
        )
    if status == 404:
        return OCIError(
            reason,
            f"{field}: {host} has no repository {repository} one may {action} ({words}); create it "
            f"(some registries want a project first) or fix the repository in {field}",
        )
    return OCIError(
        "PushFailed" if action == "push" else "PullFailed",
        f"{field}: {action} to {host}/{repository} failed with HTTP {status} ({words})",
    )


def _manifest(client: Client, reference: str) -> tuple[Any, bytes | None]:
    response = client.request("GET", client.manifest_url(reference), headers={"Accept": MANIFEST_ACCEPT})
    if response is not None and response.status_code == 200:
        return response, response.content
    return response, None


def _same_run(annotations: dict[str, str], identity: dict[str, str]) -> bool:
    """Whether an existing manifest is this run's own earlier push (a retried attempt)."""
    keys = (modelpack.ANNOTATION_RUN_ID, modelpack.ANNOTATION_FINETUNEJOB, modelpack.ANNOTATION_UID)
    return bool(identity.get(modelpack.ANNOTATION_RUN_ID)) and all(
        annotations.get(k) == identity.get(k) for k in keys
    )


def push(
    uri: str,
    folder: Path,
    *,
    lineage: dict[str, Any],
    name: str,
    overwrite: bool = False,
    auth_path: str | None = None,
    scratch: Path | None = None,
    field: str = "output.uri",
    secret_field: str = "output.secretRef",
) -> Pushed:
    """Push FOLDER (a result: weights, tokenizer, lineage.json, README.md) to URI (oci://REGISTRY/REPO:TAG)."""
    parsed = parse_uri(uri, ("oci",))
    if parsed.digest or not parsed.tag:
        raise OCIError(
            "InvalidReference", f"{field}: push to a tag (oci://REGISTRY/REPOSITORY:TAG), not {uri}"
        )
    tag = parsed.tag
    client = connect(parsed, auth_path, field, secret_field, "push")
    annotations = modelpack.lineage_annotations(lineage)
    created = str(lineage.get("finishedAt") or lineage.get("startedAt") or datetime.now(UTC).isoformat())
    annotations.update(
        {
            modelpack.ANNOTATION_CREATED: created,
            modelpack.ANNOTATION_TITLE: name,
            modelpack.ANNOTATION_VERSION: tag,
        }
    )

    response, existing = _manifest(client, tag)
    if response is None or response.status_code in (401, 403):
        raise _refusal(client, response, "push", secret_field, field)
    if existing is not None and not overwrite:
        have = json.loads(existing).get("annotations") or {}
        if not _same_run(have, annotations):
            digest = (
                response.headers.get("Docker-Content-Digest")
                or "sha256:" + hashlib.sha256(existing).hexdigest()
            )
            made_by = have.get(modelpack.ANNOTATION_FINETUNEJOB)
            raise OCIError(
                "TagExists",
                f"{field}: {parsed.registry}/{parsed.repository}:{tag} exists already ({digest}"
                f"{', pushed by FineTuneJob ' + made_by if made_by else ''}); choose a new tag in {field}, or set "
                "output.overwriteTag: true to move it to this result",
            )
        log.info("%s:%s is this run's own earlier push: replacing it", parsed.repository, tag)

    # May we push at all? Starting an upload session is the protocol's own question (then cancelled).
    start = client.request("POST", client.upload_url(), headers={"Content-Length": "0"})
    if start is None or start.status_code != 202:
        raise _refusal(client, start, "push", secret_field, field)
    with contextlib.suppress(Exception):  # a session left open expires on its own
        location = start.headers.get("Location", "")
        client.request("DELETE", location if location.startswith("http") else client.base + location)

    blob_dir = Path(tempfile.mkdtemp(prefix="kubetune-oci-", dir=str(scratch) if scratch else None))
    try:
        layers, total = [], 0
        files = modelpack.result_files(folder)
        for layer in modelpack.pack(folder, blob_dir):
            descriptor = layer.descriptor()
            _upload(client, layer.blob, descriptor, field, secret_field)
            layer.blob.unlink()
            layers.append(descriptor)
            total += layer.size
        count, precisions = modelpack.weights_facts(folder, files)
        description = (
            f"{lineage.get('resultKind') or 'model'} fine-tuned by kubetune from "
            f"{(lineage.get('baseModel') or {}).get('uri') or 'a base model'} on "
            f"{(lineage.get('dataset') or {}).get('uri') or 'a dataset'}"
        )
        config = modelpack.model_config(
            name=name, version=tag, created=created, description=description,
            family=modelpack.model_family(folder), files=files, diff_ids=[d["digest"] for d in layers],
            param_count=count, precisions=precisions,
            text_generation=lineage.get("task") in ("causal-lm", "seq2seq"),
        )  # fmt: skip
        config_blob = blob_dir / "config.json"
        config_blob.write_bytes(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
        config_size = config_blob.stat().st_size
        config_descriptor: dict[str, Any] = {
            "mediaType": modelpack.CONFIG_MEDIA_TYPE,
            "digest": modelpack.file_digest(config_blob),
            "size": config_size,
        }
        _upload(client, config_blob, config_descriptor, field, secret_field)
        total += config_size
        manifest = modelpack.manifest(config_descriptor, layers, annotations)
        client.container.tag = tag
        try:
            put = client.registry.upload_manifest(manifest, client.container)
        except Exception as error:  # noqa: BLE001 - requests and oras errors of many kinds
            raise OCIError("PushFailed", f"{field}: uploading the manifest failed: {_short(error)}") from None
        if put.status_code not in (200, 201):
            raise _refusal(client, put, "push", secret_field, field)
        # requests sends json= as json.dumps(manifest) (default separators): the digest of those bytes
        sent = hashlib.sha256(json.dumps(manifest, allow_nan=False).encode()).hexdigest()
        digest = put.headers.get("Docker-Content-Digest") or f"sha256:{sent}"
    finally:
        shutil.rmtree(blob_dir, ignore_errors=True)
    check, _ = _manifest(client, tag)
    now = (
        check.headers.get("Docker-Content-Digest") if check is not None and check.status_code == 200 else None
    )
    if now and now != digest:
        raise OCIError(
            "PushFailed",
            f"{field}: after the push, {tag} points at {now}, not at {digest}: another push raced",
        )
    pushed = oci_uri(parsed.registry, parsed.repository, tag, digest)
    log.info("pushed %s (%d layers, %d bytes)", pushed, len(layers), total)
    return Pushed(pushed, digest, len(layers), total)


def _upload(client: Client, blob: Path, descriptor: dict[str, Any], field: str, secret_field: str) -> None:
    layer = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
    try:
        response = client.registry.upload_blob(
            str(blob),
            client.container,
            layer,
            do_chunked=layer["size"] > CHUNKED_ABOVE,
            chunk_size=CHUNK_SIZE,
        )
    except Exception as error:  # noqa: BLE001 - requests and oras errors of many kinds
        raise OCIError(
            "PushFailed", f"{field}: uploading {descriptor['digest']} failed: {_short(error)}"
        ) from None
    if response.status_code not in (200, 201, 202, 204):
        raise _refusal(client, response, "push", secret_field, field)


# ---------------------------------------------------------------------------------------------- pull


def _safe_relative(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name.removeprefix("./"))
    if not name or path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        return None
    return path


def _unpack(blob: Path, media_type: str, rel: str, dest: Path) -> None:
    """Write the file(s) of one layer under DEST: a tar (plain or gzip) of regular files, or a raw file."""
    if media_type.endswith(".raw"):
        target = _safe_relative(rel)
        if target is None:
            raise TrainerError(f"layer path {rel!r} leaves the model folder")
        (dest / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(blob), dest / target)
        return
    if not media_type.endswith((".tar", ".tar+gzip")):
        raise TrainerError(
            f"layer media type {media_type} is not supported (tar, tar+gzip and raw layers are)"
        )
    with tarfile.open(blob, "r:gz" if media_type.endswith("+gzip") else "r:") as tar:
        for member in tar:
            if member.isdir():
                continue
            target = _safe_relative(member.name)
            if not member.isreg() or target is None:
                raise TrainerError(
                    f"layer of {rel!r}: member {member.name!r} is not a regular file inside the folder"
                )
            (dest / target).parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with source, open(dest / target, "wb") as out:
                shutil.copyfileobj(source, out, 1024**2)


def pull(
    uri: str,
    dest: Path,
    *,
    auth_path: str | None = None,
    field: str = "model.uri",
    secret_field: str = "model.secretRef",
) -> Pulled:
    """Pull the ModelPack artifact at URI into DEST (replaced whole; written beside it, then renamed)."""
    parsed = parse_uri(uri, ("oci",))
    client = connect(parsed, auth_path, field, secret_field, "pull")
    reference = parsed.digest or parsed.tag or "latest"
    response, raw = _manifest(client, reference)
    if raw is None:
        if response is not None and response.status_code == 404:
            raise OCIError("NotFound", f"{field}: {parsed.reference} does not exist in the registry")
        raise _refusal(client, response, "pull", secret_field, field)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if parsed.digest and parsed.digest.startswith("sha256:") and digest != parsed.digest:
        raise OCIError(
            "PullFailed", f"{field}: the registry sent a manifest with digest {digest}, not {parsed.digest}"
        )
    doc = json.loads(raw)
    if not modelpack.is_model_manifest(doc):
        kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType") or doc.get("mediaType")
        raise OCIError(
            "PullFailed",
            f"{field}: {parsed.reference} is not a ModelPack model artifact ({kind}); push models with "
            f"artifactType {modelpack.ARTIFACT_TYPE} (kubetune results are)",
        )
    staging = dest.parent / f".incoming-{dest.name}"
    shutil.rmtree(staging, ignore_errors=True)
    blobs = staging / ".blobs"
    blobs.mkdir(parents=True)
    size = 0
    for layer in doc.get("layers") or []:
        annotations = layer.get("annotations") or {}
        rel = (
            annotations.get(modelpack.ANNOTATION_FILEPATH)
            or annotations.get(modelpack.ANNOTATION_TITLE)
            or ""
        )
        blob = blobs / layer["digest"].replace(":", "-")
        try:
            client.registry.download_blob(client.container, layer["digest"], str(blob))
        except Exception as error:  # noqa: BLE001 - requests and oras errors of many kinds
            raise OCIError(
                "PullFailed", f"{field}: downloading {rel or layer['digest']} failed: {_short(error)}"
            ) from None
        if modelpack.file_digest(blob) != layer["digest"] or blob.stat().st_size != layer.get("size"):
            raise OCIError(
                "PullFailed", f"{field}: the blob of {rel or layer['digest']} does not match its digest"
            )
        _unpack(blob, layer.get("mediaType", ""), rel, staging)
        blob.unlink(missing_ok=True)
        size += int(layer.get("size") or 0)
    shutil.rmtree(blobs)
    pinned = oci_uri(parsed.registry, parsed.repository, parsed.tag, digest)
    (staging / MARKER).write_text(
        json.dumps({"uri": pinned, "digest": digest, "annotations": doc.get("annotations") or {}})
    )
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    files = sum(1 for p in dest.rglob("*") if p.is_file() and p.name != MARKER)
    log.info("pulled %s into %s (%d files, %d bytes)", pinned, dest, files, size)
    return Pulled(digest, dest, files, size)


def pulled_digest(folder: Path) -> str | None:
    """The digest a folder was pulled at (its marker), or None."""
    try:
        return json.loads((folder / MARKER).read_text()).get("digest")
    except (OSError, ValueError):
        return None
