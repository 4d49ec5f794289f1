"""The HTTP shell: OpenAI's routes for files, fine_tuning.jobs and models on FastAPI.

Every route authenticates the bearer token (TokenReview) and authorizes its verb (SubjectAccessReview) in
the target namespace before it reads or writes anything:

| route | needs, on finetunejobs.kubetune.io unless said |
|---|---|
| POST /v1/files | create |
| GET /v1/files, GET /v1/files/{id}, GET /v1/files/{id}/content | list; get; get |
| DELETE /v1/files/{id} | delete |
| POST /v1/fine_tuning/jobs | create |
| GET /v1/fine_tuning/jobs | list |
| GET /v1/fine_tuning/jobs/{id}, .../events, .../checkpoints | get |
| POST /v1/fine_tuning/jobs/{id}/cancel, .../pause, .../resume | patch |
| GET /v1/models, GET /v1/models/{id} | list modelserves.kubetune.io |

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, and ``Ctx`` is local.)
The routes that talk to the API server are plain functions (FastAPI runs them on its thread pool, the client
is synchronous and thread-safe); the upload is async so that its body is counted while it arrives.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from kubetune.reconcile.client import RESOURCES, ApiException, Kube, fmt_time, now

from . import create as mapping
from . import views
from .auth import Caller, Reviews, target_namespace
from .errors import ApiError, bad_request, not_found
from .settings import GatewaySettings
from .store import FileStore
from .training_files import TrainingFileError

log = logging.getLogger("kubetune.gateway")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields beside the file


@dataclass(frozen=True)
class Context:
    caller: Caller
    namespace: str


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the file is larger than this gateway accepts ({limit} bytes): split it, or ask the operator of the "
        "gateway to raise api.files.maxBytes",
        "file",
        "file_too_large",
        retry=False,
    )


def kube_error(error: ApiException, what: str) -> ApiError:
    """An error of the API server as the caller should see it."""
    if error.status == 404:
        return ApiError(404, f"{what}: not found", None, "not_found", retry=False)
    if error.status == 403:
        return ApiError(500, f"the gateway's ServiceAccount may not {what}: {error.message}", None, "gateway_rbac",
                        retry=False)  # fmt: skip
    if error.status in (400, 422):
        return ApiError(
            400, f"the API server refused to {what}: {error.message}", None, "invalid_job", retry=False
        )
    if error.status == 409:
        return ApiError(409, f"{what}: {error.message}", None, "conflict", retry=True)
    return ApiError(
        503, f"the API server could not {what}: {error.message}", None, "api_unavailable", retry=True
    )


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


def create_app(
    settings: GatewaySettings, kube: Kube, *, store: FileStore | None = None, reviews: Reviews | None = None
) -> FastAPI:
    """The gateway's ASGI application."""
    store = store or FileStore(settings.files_dir)
    reviews = reviews or Reviews(kube, settings.audiences, settings.auth_cache_seconds)
    app = FastAPI(
        title="kubetune: OpenAI-compatible fine-tuning API",
        version="v1",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), error.status, headers=error.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return await _api_error(request, bad_request(f"{param}: {first.get('msg', 'invalid')}", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = "no such route" if error.status_code == 404 else str(error.detail)
        return await _api_error(
            request, ApiError(error.status_code, f"{request.method} {request.url.path}: {message}")
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return await _api_error(request, ApiError(500, "the gateway failed; its log says why", retry=True))

    def context(
        authorization: Annotated[str | None, Header()] = None,
        openai_project: Annotated[str | None, Header(alias="OpenAI-Project")] = None,
        kubetune_namespace: Annotated[str | None, Header(alias="Kubetune-Namespace")] = None,
    ) -> Context:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "no bearer token: send a Kubernetes token as the API key (Authorization: Bearer TOKEN)",
                None,
                "invalid_api_key",
                retry=False,
            )
        if openai_project and kubetune_namespace and openai_project != kubetune_namespace:
            raise bad_request("OpenAI-Project and Kubetune-Namespace name different namespaces", "project")
        caller = reviews.authenticate(token.strip())
        return Context(caller, target_namespace(caller, kubetune_namespace or openai_project))

    Ctx = Annotated[Context, Depends(context)]

    def authorize(ctx: Context, verb: str, resource: str = "finetunejobs") -> None:
        reviews.authorize(ctx.caller, ctx.namespace, verb, resource)

    def get_job(ctx: Context, job_id: str) -> dict[str, Any]:
        try:
            obj = kube.get("FineTuneJob", ctx.namespace, job_id)
        except ApiException as error:
            raise kube_error(error, f"read FineTuneJob {job_id}") from None
        if obj is None:
            raise not_found("fine-tuning job", job_id, ctx.namespace)
        return obj

    def modelserves(ctx: Context, required: bool) -> list[dict[str, Any]] | None:
        """The namespace's ModelServes when the caller may list them (REQUIRED: else a 403), else None."""
        if required:
            authorize(ctx, "list", "modelserves")
        elif not reviews.allowed(ctx.caller, ctx.namespace, "list", "modelserves")[0]:
            return None
        try:
            return kube.list("ModelServe", ctx.namespace)
        except ApiException as error:
            raise kube_error(error, "list ModelServes") from None

    def job_view(obj: dict[str, Any], served: list[dict[str, Any]] | None) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        ftm = views.fine_tuned_model(name, served) if served is not None else None
        return views.job_object(obj, fine_tuned_model=ftm, base_learning_rate=settings.base_learning_rate)

    # ------------------------------------------------------------------------------------------ health
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # ------------------------------------------------------------------------------------------- files
    @app.post("/v1/files")
    async def upload_file(request: Request, ctx: Ctx) -> dict[str, Any]:
        await run_in_threadpool(authorize, ctx, "create")
        limit = settings.max_file_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
            raise _too_large(limit)
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await request.receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit + FORM_OVERHEAD:
                    raise _TooLarge
            return message

        try:
            form = await Request(request.scope, counted).form(max_files=1, max_fields=16)
        except _TooLarge:
            raise _too_large(limit) from None
        except MultiPartException as error:
            raise bad_request(f"not a valid multipart upload: {error.message}", "file") from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if purpose != "fine-tune":
                raise bad_request(
                    f"purpose {purpose!r} is not supported: this gateway stores training data (purpose fine-tune)",
                    "purpose",
                )
            if not isinstance(upload, UploadFile):
                raise bad_request("file: missing (a multipart field named file with the JSONL data)", "file")
            if upload.size is not None and upload.size > limit:
                raise _too_large(limit)
            filename = Path(upload.filename or "upload.jsonl").name[:255]
            try:
                meta = await run_in_threadpool(store.add, ctx.namespace, filename, purpose, upload.file)
            except TrainingFileError as error:
                raise ApiError(
                    400, f"{filename}: {error}", "file", "invalid_training_file", retry=False
                ) from None
        finally:
            await form.close()
        log.info("%s uploaded %s (%s %s examples) to %s", ctx.caller.username, meta["id"],
                 meta["kubetune"]["examples"], meta["kubetune"]["kind"], ctx.namespace)  # fmt: skip
        return meta

    @app.get("/v1/files")
    def list_files(
        ctx: Ctx,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        purpose: str | None = None,
    ) -> dict[str, Any]:
        authorize(ctx, "list")
        files = [f for f in store.list(ctx.namespace) if purpose is None or f.get("purpose") == purpose]
        files.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
        return views.page(files, after, limit)

    def file_meta(ctx: Context, file_id: str) -> dict[str, Any]:
        meta = store.get(ctx.namespace, file_id)
        if meta is None:
            raise not_found("file", file_id, ctx.namespace)
        return meta

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str, ctx: Ctx) -> dict[str, Any]:
        authorize(ctx, "get")
        return file_meta(ctx, file_id)

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, ctx: Ctx) -> FileResponse:
        authorize(ctx, "get")
        path = store.content_path(ctx.namespace, file_id)
        if path is None:
            raise not_found("file", file_id, ctx.namespace)
        return FileResponse(path, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, ctx: Ctx) -> dict[str, Any]:
        authorize(ctx, "delete")
        if not store.delete(ctx.namespace, file_id):
            raise not_found("file", file_id, ctx.namespace)
        log.info("%s deleted %s in %s", ctx.caller.username, file_id, ctx.namespace)
        return {"id": file_id, "object": "file", "deleted": True}

    # -------------------------------------------------------------------------------- fine-tuning jobs
    @app.post("/v1/fine_tuning/jobs")
    def create_job(
        ctx: Ctx,
        body: Annotated[Any, Body()] = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
    ) -> dict[str, Any]:
        authorize(ctx, "create")
        request = mapping.parse_request(body)
        training = store.get(ctx.namespace, request.training_file)
        if training is None:
            raise bad_request(f"training_file: no file {request.training_file!r} in namespace {ctx.namespace}",
                              "training_file", "file_not_found")  # fmt: skip
        splits = {mapping.TRAIN_SPLIT: request.training_file}
        if request.validation_file:
            validation = store.get(ctx.namespace, request.validation_file)
            if validation is None:
                raise bad_request(f"validation_file: no file {request.validation_file!r} in namespace "
                                  f"{ctx.namespace}", "validation_file", "file_not_found")  # fmt: skip
            if validation["kubetune"]["kind"] != training["kubetune"]["kind"]:
                raise bad_request(
                    f"validation_file holds {validation['kubetune']['kind']} examples and training_file "
                    f"{training['kubetune']['kind']} examples: use the same format", "validation_file",
                )  # fmt: skip
            splits[mapping.VALIDATION_SPLIT] = request.validation_file
        model = mapping.resolve_model(request.model, settings.base_models)
        if model[0] == "job":
            get_job(ctx, model[1])  # a 404 when there is no such FineTuneJob to continue from
        user = ctx.caller.username
        name = mapping.job_name(ctx.namespace, user, idempotency_key)
        digest = mapping.request_digest(request)
        if idempotency_key is not None:  # a retry of a create that went through: answer with that job
            try:
                existing = kube.get("FineTuneJob", ctx.namespace, name)
            except ApiException as error:
                raise kube_error(error, f"read FineTuneJob {name}") from None
            if existing is not None:
                return replay(ctx, existing, digest)
        seed = request.seed if request.seed is not None else int(name[-8:], 16) % mapping.MAX_SEED
        files_uri = settings.files_uri.format(namespace=ctx.namespace)
        manifest = mapping.finetunejob(
            request,
            name=name,
            namespace=ctx.namespace,
            user=user,
            model=model,
            file_kind=training["kubetune"]["kind"],
            dataset_uri=f"{files_uri}/jobs/{name}",
            has_validation=len(splits) > 1,
            settings=settings,
            seed=seed,
            idempotency_key=idempotency_key,
        )
        made_folder = store.link_job_data(ctx.namespace, name, splits)
        try:
            created = kube.request("POST", _path("FineTuneJob", ctx.namespace), body=manifest)
        except ApiException as error:
            if error.status == 409:  # made meanwhile (a concurrent retry), or the name is taken
                try:
                    return replay(ctx, get_job(ctx, name), digest)
                except ApiError:
                    if made_folder:  # the folder was made for this request, and it made no job
                        store.drop_job_data(ctx.namespace, name)
                    raise
            if made_folder:
                store.drop_job_data(ctx.namespace, name)
            raise kube_error(error, f"create FineTuneJob {name}") from None
        log.info("%s created FineTuneJob %s/%s (model %s, %s)", user, ctx.namespace, name, request.model,
                 request.training_file)  # fmt: skip
        return job_view(created, None)

    def replay(ctx: Context, existing: dict[str, Any], digest: str) -> dict[str, Any]:
        """The answer to a create whose job name is taken: the same request again gets that job; anything
        else is a conflict that no retry resolves."""
        ann = existing["metadata"].get("annotations") or {}
        name = existing["metadata"]["name"]
        if ann.get(mapping.ANN_USER) == ctx.caller.username and ann.get(mapping.ANN_REQUEST) == digest:
            return job_view(existing, None)
        mine = ann.get(mapping.ANN_USER) == ctx.caller.username and mapping.ANN_REQUEST in ann
        raise ApiError(
            409,
            f"FineTuneJob {name} already exists in namespace {ctx.namespace} "
            + ("and was created by this Idempotency-Key with a different request: use a new key for a new job"
               if mine else "and was not created by this request: use another Idempotency-Key"),
            None,
            "name_collision",
            retry=False,
        )  # fmt: skip

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(
        request: Request,
        ctx: Ctx,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> dict[str, Any]:
        authorize(ctx, "list")
        wanted = {
            key[len("metadata[") : -1]: value
            for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        try:
            jobs = kube.list("FineTuneJob", ctx.namespace)
        except ApiException as error:
            raise kube_error(error, "list FineTuneJobs") from None
        jobs = [j for j in views.newest_first(jobs) if not wanted or views.metadata_matches(j, wanted)]
        items = [{"id": j["metadata"]["name"], "obj": j} for j in jobs]
        result = views.page(items, after, limit)
        served = modelserves(ctx, required=False) if result["data"] else None
        result["data"] = [job_view(item["obj"], served) for item in result["data"]]
        return result

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
        authorize(ctx, "get")
        return job_view(get_job(ctx, job_id), modelserves(ctx, required=False))

    def suspend(ctx: Context, job_id: str, action: str) -> dict[str, Any]:
        authorize(ctx, "patch")
        obj = get_job(ctx, job_id)
        state = views.job_status(obj)
        if action == "cancel" and state == "cancelled":
            return job_view(obj, None)
        if state in views.TERMINAL:
            raise ApiError(400, f"fine-tuning job {job_id} is {state}: it cannot be {action}d", None,
                           "job_finished", retry=False)  # fmt: skip
        patch: dict[str, Any] = {"spec": {"suspend": action != "resume"}}
        if action == "cancel":
            patch["metadata"] = {"annotations": {mapping.ANN_CANCELLED: fmt_time(now())}}
        try:
            patched = kube.patch("FineTuneJob", ctx.namespace, job_id, patch)
        except ApiException as error:
            raise kube_error(error, f"{action} FineTuneJob {job_id}") from None
        log.info("%s: %s FineTuneJob %s/%s", ctx.caller.username, action, ctx.namespace, job_id)
        return job_view(patched, None)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
        return suspend(ctx, job_id, "cancel")

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
        return suspend(ctx, job_id, "pause")

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
        return suspend(ctx, job_id, "resume")

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(
        job_id: str, ctx: Ctx, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> dict[str, Any]:
        authorize(ctx, "get")
        obj = get_job(ctx, job_id)
        try:
            events = kube.list(
                "Event",
                ctx.namespace,
                fields={"involvedObject.kind": "FineTuneJob", "involvedObject.name": job_id},
            )
        except ApiException as error:
            raise kube_error(error, "list Events") from None
        uid = obj["metadata"].get("uid")
        mine = [e for e in events if (e.get("involvedObject") or {}).get("uid") in (None, uid)]
        return views.page(views.job_events(obj, mine), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(
        job_id: str, ctx: Ctx, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 10
    ) -> dict[str, Any]:
        authorize(ctx, "get")
        return views.page(views.job_checkpoints(get_job(ctx, job_id)), after, limit)

    # ------------------------------------------------------------------------------------------ models
    @app.get("/v1/models")
    def list_models(ctx: Ctx) -> dict[str, Any]:
        return {"object": "list", "data": views.models(modelserves(ctx, required=True) or [])}

    @app.get("/v1/models/{model_id}")
    def retrieve_model(model_id: str, ctx: Ctx) -> dict[str, Any]:
        for model in views.models(modelserves(ctx, required=True) or []):
            if model["id"] == model_id:
                return model
        raise not_found("model", model_id, ctx.namespace)

    app.state.started = time.time()
    return app


__all__ = ["Context", "create_app", "kube_error"]
