"""The jobs operations of the OpenAPI document: submit per model version, read, cancel."""

from __future__ import annotations

import copy
from typing import Any

from ..config import Settings
from ..registry.catalog import Catalog

_JOB_STATUSES = "`queued`, `running`, `succeeded`, `failed` or `cancelled`"


def add_jobs(document: dict[str, Any], catalog: Catalog, settings: Settings,
             job_ref: dict[str, Any], predict_ops: dict[str, dict[str, Any]]) -> None:
    """Add the jobs paths; ``predict_ops`` are the predict operations by model key, whose
    body and input problems a submit shares."""
    from .openapi import _ident, _json, _problem

    document["tags"].append({"name": "jobs", "description": "Long or bulky work, computed in "
                             "the background: submit, then poll or long-poll for the result."})
    paths = document["paths"]
    accepted = {
        "description": "Accepted: the job is stored and queued. `Location` is its URL.",
        "headers": {
            "Location": {"schema": {"type": "string"}, "description": "/v1/jobs/{id}"},
            "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                    "description": "Present when the Idempotency-Key was "
                                                   "seen before: this is that job."},
        },
        "content": {"application/json": {"schema": job_ref}},
    }
    idempotency = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "Any unique string (a UUID): sending it again with the same body "
                       "returns the same job instead of making a new one.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                   "pattern": "^[\\x21-\\x7e]+$"},
    }
    store_down = _problem(503, only=("The job store cannot be reached now (Retry-After).",
                                     ["job-store-unavailable"]))
    for name in catalog.names():
        default = catalog.default_version(name)
        for spec in catalog.versions(name):
            predict = predict_ops[str(spec.key)]
            body = copy.deepcopy(predict["requestBody"])
            body["content"]["application/json"]["schema"]["oneOf"][1]["maxItems"] = (
                settings.job_max_items)
            responses = {"202": accepted, **{s: predict["responses"][s]
                                             for s in ("400", "413", "415", "422")}}
            responses["409"] = _problem(409, only=(
                "The Idempotency-Key names a job made with another model or body.",
                ["idempotency-key-reused"]))
            responses["500"] = _problem(500, only=(
                "The server failed; `error_id` finds the traceback in the server log.",
                ["internal-error"]))
            responses["503"] = store_down
            op: dict[str, Any] = {
                "tags": ["jobs", spec.name],
                "description": (
                    f"Submit the same body as predict: one input, or an array of up to "
                    f"{settings.job_max_items} inputs, validated before anything is queued. "
                    "The job runs in capacity live requests leave idle, in batches, and "
                    "survives restarts. GET the `Location` (with `?wait=` seconds to long-poll) for its "
                    f"status, progress and result; results are kept {settings.job_ttl:g} s."),
                "parameters": [idempotency],
                "requestBody": body,
                "responses": responses,
            }
            paths[f"/v1/models/{name}/versions/{spec.version}/jobs"] = {"post": {
                **op, "operationId": f"submit_job_{_ident(name)}_v{_ident(spec.version)}",
                "summary": f"Submit a job to {name} version {spec.version}"}}
            if spec.version == default:
                paths[f"/v1/models/{name}/jobs"] = {"post": {
                    **op, "operationId": f"submit_job_{_ident(name)}",
                    "summary": f"Submit a job to {name} (default version {spec.version})"}}
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "The job's id, from the submit answer."}
    not_found = _problem(404, only=("No such job, or its result expired.", ["job-not-found"]))
    paths["/v1/jobs/{id}"] = {
        "get": {
            "summary": "Get a job", "tags": ["jobs"], "operationId": "get_job",
            "description": f"The job's status ({_JOB_STATUSES}), times, progress, and once "
                           "finished its `result` or `error`. With `wait`, answers when the "
                           "job finishes or after that many seconds, whichever is first.",
            "parameters": [job_id, {
                "name": "wait", "in": "query", "required": False,
                "description": f"Seconds to wait for the job to finish (0 to "
                               f"{settings.job_max_wait:g}).",
                "schema": {"type": "number", "minimum": 0, "maximum": settings.job_max_wait}}],
            "responses": {
                "200": _json("The job.", job_ref), "404": not_found,
                "422": _problem(422, only=("`wait` is not a number of seconds in range.",
                                           ["validation-error"])),
                "503": store_down},
        },
        "delete": {
            "summary": "Cancel a job", "tags": ["jobs"], "operationId": "cancel_job",
            "description": "Cancel a queued or running job: inputs not yet computed never "
                           "are, and the job ends `cancelled`.",
            "parameters": [job_id],
            "responses": {
                "200": _json("The cancelled job.", job_ref), "404": not_found,
                "409": _problem(409, only=("The job has already finished.",
                                           ["job-finished"])),
                "503": store_down},
        },
    }
