"""The OpenAPI 3.1 document, built once from the catalog and the settings.

Every operation lists every status it can return, with the problem ``type``
values each status can carry, so clients (and schemathesis) can rely on it.
Each model version gets concrete paths, so the document shows each model's own
input and output schemas and examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..config import Settings
from ..registry.catalog import Catalog
from ..errors import InvalidInput
from ..registry.spec import ModelSpec
from .inputs import example_from_schema, validate_inputs
from .api_types import (
    AdminAccepted,
    Health,
    Job,
    ModelInfo,
    ModelList,
    Problem,
    Readiness,
    ReplicasRequest,
)

REF = "#/components/schemas/{model}"
# The least X-Request-Timeout honoured; the API layer refuses shorter ones.
MIN_REQUEST_TIMEOUT = 0.1

_PROBLEMS: dict[int, tuple[str, list[str]]] = {
    400: ("The body is not JSON, or nested too deep.", ["invalid-json"]),
    401: ("No bearer token was sent.", ["unauthorized"]),
    403: ("The bearer token is not the admin token.", ["forbidden"]),
    404: ("No such model or version; the detail lists the known ones.",
          ["model-not-found", "version-not-found", "not-found"]),
    413: ("The body is larger than the server accepts.", ["payload-too-large"]),
    415: ("The body is not sent as application/json, or with a Content-Encoding other than "
          "gzip.", ["unsupported-media-type"]),
    422: ("The input does not match the model's input schema; `errors` names each field.",
          ["validation-error"]),
    500: ("The model raised (or the server failed); `error_id` finds the traceback in the "
          "server log.", ["model-error", "internal-error"]),
    502: ("The model worker died while computing this request.", ["worker-crashed"]),
    503: ("The model is overloaded or loading (with Retry-After), failed to load, or unloaded.",
          ["overloaded", "model-loading", "model-failed", "model-unloaded"]),
    504: ("The request's deadline passed before a result was ready.", ["timeout"]),
}

_PREDICT_STATUSES = (400, 413, 415, 422, 500, 502, 503, 504)


@dataclass(frozen=True)
class ApiInfo:
    """What the document says of the API as a whole (``corral.Server(title=..., ...)``)."""

    title: str = "Corral"
    version: str = "v1"
    description: str | None = None


_DEFAULT_DESCRIPTION = (
    "Models served by Corral. Every error is `application/problem+json` "
    "(RFC 9457) with a stable `type`; validation errors list each field in `errors`."
)


def build_openapi(catalog: Catalog, settings: Settings,
                  info: ApiInfo = ApiInfo()) -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    io_types: list[tuple[type[BaseModel], Any]] = []
    for spec in catalog:
        io_types += [(spec.input_type, "validation"), (spec.output_type, "serialization")]
    io_types += [(t, "serialization") for t in (ModelList, ModelInfo, Readiness, Health, Problem,
                                                AdminAccepted, Job)]
    io_types += [(ReplicasRequest, "validation")]
    refs, defs = models_json_schema(io_types, ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})

    def ref(t: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(t, mode)])  # type: ignore[index]

    paths: dict[str, Any] = {
        "/v1/models": {"get": _operation(
            "List models", "Every model with its versions, their state and batching.",
            "models", {200: _json("The models.", ref(ModelList, "serialization"))})},
        "/v1/models/{name}": {"get": _operation(
            "Describe a model",
            "One model's versions, state, batching, and input and output JSON Schemas.",
            "models",
            {200: _json("The model.", ref(ModelInfo, "serialization")), 404: _problem(404)},
            parameters=[{"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string"}, "description": "The model's name."}])},
        "/healthz": {"get": _operation(
            "Liveness", "200 while the server process is alive.", "health",
            {200: _json("Alive.", ref(Health, "serialization"))})},
        "/readyz": {"get": _operation(
            "Readiness",
            "200 when the server can serve: some model is ready, none is still loading, and "
            "none has failed to load (unless CORRAL_READY_WITH_FAILED_MODELS is set); unloaded "
            "models do not count. 503 otherwise. The body lists each model's state.", "health",
            {200: _json("Ready.", ref(Readiness, "serialization")),
             503: _json("Not ready yet.", ref(Readiness, "serialization"))})},
        "/metrics": {"get": _operation(
            "Metrics", "Prometheus text format, summed over every process of the server.",
            "health", {200: {"description": "Prometheus exposition format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        "/openapi.json": {"get": _operation(
            "OpenAPI document", "This document.", "docs",
            {200: _json("The OpenAPI 3.1 document.", {"type": "object"})})},
        "/docs": {"get": _operation(
            "Swagger UI", "Interactive documentation, served from local files.", "docs",
            {200: {"description": "An HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}})},
    }
    for name in catalog.names():
        default = catalog.default_version(name)
        for spec in catalog.versions(name):
            op = _predict_operation(spec, settings, ref(spec.input_type, "validation"),
                                    ref(spec.output_type, "serialization"), schemas)
            paths[f"/v1/models/{name}/versions/{spec.version}/predict"] = {"post": {
                **op, "operationId": f"predict_{_ident(name)}_v{_ident(spec.version)}",
                "summary": f"Predict with {name} version {spec.version}"}}
            if spec.version == default:
                paths[f"/v1/models/{name}/predict"] = {"post": {
                    **op, "operationId": f"predict_{_ident(name)}",
                    "summary": f"Predict with {name} (default version {spec.version})"}}

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": info.title,
            "version": info.version,
            "description": info.description or _DEFAULT_DESCRIPTION,
        },
        "tags": [{"name": n, "description": catalog.resolve(n).description or f"Model {n}."}
                 for n in catalog.names()]
        + [{"name": "models"}, {"name": "health"}, {"name": "docs"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }
    from .jobs_openapi import add_jobs

    add_jobs(document, catalog, settings, ref(Job, "serialization"),
             {str(spec.key): _predict_operation(spec, settings, ref(spec.input_type, "validation"),
                                                ref(spec.output_type, "serialization"), schemas)
              for spec in catalog})
    if settings.admin_token is not None:
        _add_admin(document, catalog, ref(AdminAccepted, "serialization"),
                   ref(ReplicasRequest, "validation"))
    return document


def _add_admin(document: dict[str, Any], catalog: Catalog, accepted: dict[str, Any],
               replicas: dict[str, Any]) -> None:
    """The admin operations, each behind the bearer token (only when one is configured)."""
    document["components"]["securitySchemes"] = {
        "adminToken": {"type": "http", "scheme": "bearer",
                       "description": "The value of CORRAL_ADMIN_TOKEN."}}
    document["tags"].append({"name": "admin", "description": "Load, unload and scale models "
                             "at run time (CORRAL_ADMIN_TOKEN)."})
    paths = document["paths"]
    ops = (
        ("load", "post", "Load", "Load the model (again, if it failed) with its declared "
         "replicas.", None),
        ("unload", "post", "Unload", "Stop every replica and free its memory; requests get 503 "
         "model-unloaded until it is loaded again.", None),
        ("replicas", "put", "Set replicas of", "Run this many replicas (0 unloads); replicas "
         "no longer wanted finish their batch first.", replicas),
    )
    for name in catalog.names():
        targets = [(f"/v1/models/{name}", f"{_ident(name)}", f"{name} (default version)",
                    catalog.resolve(name))]
        targets += [(f"/v1/models/{name}/versions/{v.version}",
                     f"{_ident(name)}_v{_ident(v.version)}", f"{name} version {v.version}", v)
                    for v in catalog.versions(name)]
        for prefix, ident, label, spec in targets:
            for action, method, verb, description, body in ops:
                statuses = (401, 403) + ((400, 413, 415, 422) if body else ())
                op: dict[str, Any] = {
                    "summary": f"{verb} {label}", "description": description,
                    "tags": ["admin"], "operationId": f"admin_{action}_{ident}",
                    "security": [{"adminToken": []}],
                    "responses": {"202": _json("Under way; GET the model to follow its state.",
                                               accepted),
                                  **{str(s): _problem(s) for s in statuses}},
                }
                if spec.inline:
                    op["responses"]["409"] = _problem(409, only=(
                        "The model runs inline, in every HTTP worker: it cannot be managed "
                        "at run time.", ["model-inline"]))
                if body:
                    op["requestBody"] = {"required": True, "content": {"application/json": {
                        "schema": body, "example": {"replicas": 2}}}}
                paths[f"{prefix}/{action}"] = {method: op}


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# One example document per problem type, shown by Swagger UI beside each status.
_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "invalid-json": ("Body is not valid JSON", {"detail": "The body is not valid JSON: Expecting "
                     "value: line 1 column 1 (char 0)."}),
    "unauthorized": ("Unauthorized", {"detail": "The admin API needs an Authorization: Bearer "
                     "<token> header."}),
    "forbidden": ("Forbidden", {"detail": "The bearer token is not the admin token of this "
                  "server."}),
    "model-not-found": ("Model not found", {"detail": "No model named 'x'; known models: iris."}),
    "version-not-found": ("Version not found", {"detail": "Model 'iris' has no version '3'; "
                          "known: 1, 2."}),
    "not-found": ("Not found", {"detail": "No endpoint at /v2. The API is described at /docs."}),
    "payload-too-large": ("Payload too large", {"detail": "The body is 20971520 bytes; the limit "
                          "is 10485760 bytes."}),
    "unsupported-media-type": ("Unsupported media type", {"detail": "The body must be JSON sent "
                               "with Content-Type: application/json; got text/plain."}),
    "validation-error": ("Validation error", {
        "detail": "Invalid input: 0.text, 1.text.",
        "errors": [{"loc": [0, "text"], "msg": "Field required", "type": "missing"},
                   {"loc": [1, "text"], "msg": "String should have at least 1 character",
                    "type": "string_too_short"}]}),
    "model-error": ("Model error", {"detail": "Model iris:1 failed on this input; the server log "
                    "has the details under error id 3f2a9c1e0b7d4a65.",
                    "error_id": "3f2a9c1e0b7d4a65"}),
    "worker-crashed": ("Model worker crashed", {"detail": "The process computing this request "
                       "died."}),
    "overloaded": ("Model overloaded", {"detail": "The queue holds 2048 inputs and admits at most "
                   "2048; retry later.", "retry_after": 1}),
    "model-loading": ("Model loading", {"detail": "Model iris:1 is still loading; retry shortly.",
                      "retry_after": 2}),
    "model-failed": ("Model failed", {"detail": "Model iris:1 failed to load: load() raised "
                     "OSError; the server log has the details under error id 5d0c2b7e9a114f38."}),
    "model-unloaded": ("Model unloaded", {"detail": "Model iris:1 is unloaded; an administrator "
                       "can load it."}),
    "model-inline": ("Model runs inline", {"detail": "Model iris:1 runs inline, inside every "
                     "HTTP worker: it is loaded with each worker and cannot be loaded, unloaded "
                     "or scaled at run time. Declare it with placement = \"process\" to manage "
                     "it through the admin API."}),
    "timeout": ("Request timed out", {"detail": "Model iris:1 gave no result in time."}),
    "job-store-unavailable": ("Job store unavailable", {"detail": "The job store cannot be "
                              "reached right now; retry shortly.", "retry_after": 2}),
    "job-not-found": ("Job not found", {"detail": "No job 'kq3X...': it never existed, or it "
                      "finished more than 86400 s ago and its result was removed."}),
    "job-finished": ("Job already finished", {"detail": "Job kq3X... has already succeeded; "
                     "only a queued or running job can be cancelled."}),
    "idempotency-key-reused": ("Idempotency key reused", {"detail": "Idempotency-Key 'abc' was "
                               "used for job kq3X... with a different model or body; use a new "
                               "key for a new job."}),
    "internal-error": ("Internal server error", {"detail": "The server failed on this request; "
                       "error id 0c4e1f2a9b3d5e67.", "error_id": "0c4e1f2a9b3d5e67"}),
}


def _problem(status: int, known: dict[str, tuple[str, dict[str, Any]]] | None = None,
             only: tuple[str, list[str]] | None = None) -> dict[str, Any]:
    """The response of one problem status; ``only`` narrows it to (description, types)."""
    description, types = only or _PROBLEMS[status]
    known = known or _EXAMPLES
    examples = {
        t: {"summary": t, "value": {"type": t, "title": known[t][0], "status": status,
                                    **known[t][1]}}
        for t in types
    }
    return {
        "description": f"{description} Problem types: {', '.join(types)}.",
        "content": {"application/problem+json": {
            "schema": {"$ref": REF.format(model="Problem")}, "examples": examples}},
    }


def _operation(summary: str, description: str, tag: str, responses: dict[int, Any],
               parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "description": description, "tags": [tag],
        "operationId": summary.lower().replace(" ", "_"),
        "responses": {str(k): v for k, v in responses.items()},
    }
    if parameters:
        op["parameters"] = parameters
    return op


def _predict_operation(spec: ModelSpec, settings: Settings, input_ref: dict[str, Any],
                       output_ref: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    b = spec.batching
    body_schema = {"oneOf": [
        input_ref,
        {"type": "array", "items": input_ref, "minItems": 1,
         "maxItems": min(settings.max_items, b.max_queue)},
    ]}
    media: dict[str, Any] = {"schema": body_schema}
    example = _example(schemas, input_ref)
    if example is not None:
        media["examples"] = {
            "one": {"summary": "One input", "value": example},
            "batch": {"summary": "Several inputs", "value": [example, example]},
        }
    item: dict[str, Any] = output_ref
    per_item = ""
    if spec.per_item_errors:
        item = {"anyOf": [output_ref, {"$ref": REF.format(model="Problem")}]}
        per_item = (" An input that fails alone has its problem document in its place in the "
                    "array (this model returns per-item errors).")
    responses: dict[str, Any] = {
        "200": _json(
            "One output for an object body; an array of outputs, in order, for an array body."
            + per_item, {"oneOf": [output_ref, {"type": "array", "items": item}]}),
    }
    known = {**_EXAMPLES, **_model_examples(spec, settings)}
    responses.update({str(s): _problem(s, known) for s in _PREDICT_STATUSES})
    return {
        "description": (
            f"{spec.description}\n\nSend one input object, or an array of up to "
            f"{min(settings.max_items, b.max_queue)} inputs (validated all or nothing), as JSON, "
            "optionally gzip-compressed (`Content-Encoding: gzip`). Batching: up to "
            f"{b.max_size} inputs per call, waiting at most {b.max_wait_ms:g} ms for a batch "
            f"to fill; queue bound {b.max_queue}; timeout {b.timeout:g} s."
        ).strip(),
        "tags": [spec.name],
        "parameters": [{
            "name": "X-Request-Timeout", "in": "header", "required": False,
            "description": (f"Seconds to wait for a result: at least {MIN_REQUEST_TIMEOUT:g}; "
                            f"values above the model's timeout ({b.timeout:g}) are capped."),
            "schema": {"type": "number", "minimum": MIN_REQUEST_TIMEOUT},
        }],
        "requestBody": {"required": True, "content": {"application/json": media}},
        "responses": responses,
    }


def _model_examples(spec: ModelSpec, settings: Settings) -> dict[str, tuple[str, dict[str, Any]]]:
    """Problem examples of one predict operation, with the model's own name, limits and
    fields: the validation error is what Corral answers to an array of one empty object."""
    key, b = spec.key, spec.batching
    examples: dict[str, tuple[str, dict[str, Any]]] = {
        "payload-too-large": ("Payload too large", {
            "detail": f"The body is {2 * settings.max_body_bytes} bytes; the limit is "
                      f"{settings.max_body_bytes} bytes."}),
        "model-error": ("Model error", {
            "detail": f"Model {key} failed on this input; the server log has the details "
                      "under error id 3f2a9c1e0b7d4a65.", "error_id": "3f2a9c1e0b7d4a65"}),
        "worker-crashed": ("Model worker crashed", {
            "detail": f"The replica computing this request for model {key} died (pid 4242). "
                      "Other requests are unaffected; this input may be the cause."}),
        "overloaded": ("Model overloaded", {
            "detail": f"The queue holds {b.max_queue} inputs and admits at most {b.max_queue}; "
                      "retry later.", "retry_after": 1}),
        "model-loading": ("Model loading", {
            "detail": f"Model {key} is still loading; retry shortly.", "retry_after": 2}),
        "model-failed": ("Model failed", {
            "detail": f"Model {key} failed to load: load() raised OSError: weights file not "
                      "found (error id 5d0c2b7e9a114f38)."}),
        "model-unloaded": ("Model unloaded", {
            "detail": f"Model {key} is unloaded; an administrator can load it."}),
        "model-inline": ("Model runs inline", {"detail": "Model iris:1 runs inline, inside every "
                     "HTTP worker: it is loaded with each worker and cannot be loaded, unloaded "
                     "or scaled at run time. Declare it with placement = \"process\" to manage "
                     "it through the admin API."}),
    "timeout": ("Request timed out", {
            "detail": f"Model {key} did not start this request before its deadline."}),
    }
    try:
        validate_inputs(spec.input_type, b"[{}]", [{}], 1)
    except InvalidInput as exc:
        examples["validation-error"] = ("Validation error",
                                        {"detail": exc.detail, "errors": exc.errors})
    return examples


def _example(schemas: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any] | None:
    """An input built from the fields' examples and defaults, if every required field has one."""
    name = str(ref.get("$ref", "")).rsplit("/", 1)[-1]
    return example_from_schema(schemas.get(name, {}))