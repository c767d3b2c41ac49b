"""Response bodies of Corral's own endpoints, as pydantic models.

The OpenAPI document takes their JSON Schemas from here, so what the server
sends and what the document promises cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import PROBLEM_TYPES


class BatchingInfo(BaseModel):
    max_size: int
    max_wait_ms: float
    max_queue: int
    timeout: float


class VersionInfo(BaseModel):
    """One version of a model, as GET /v1/models and /v1/models/{name} show it."""

    version: str
    default: bool
    state: Literal["loading", "ready", "failed", "unloaded"]
    error: str | None = Field(None, description="Why the model failed to load, when it did.")
    replicas: int
    replicas_ready: int
    batching: BatchingInfo
    predict_url: str
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of one input (detail endpoint only)."
    )
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of one output (detail endpoint only)."
    )


class ModelInfo(BaseModel):
    name: str
    description: str
    default_version: str
    versions: list[VersionInfo]


class ModelList(BaseModel):
    models: list[ModelInfo]


class ReplicasRequest(BaseModel):
    """Body of PUT .../replicas."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, le=64, description="Replicas wanted; 0 unloads the model.",
                          examples=[2])


class AdminAccepted(BaseModel):
    """What an admin operation answers: the change is under way (watch ``state``)."""

    name: str
    version: str
    replicas: int = Field(description="Replicas now wanted.")
    state: Literal["loading", "ready", "failed", "unloaded"]


class ModelReadiness(BaseModel):
    name: str
    version: str
    state: Literal["loading", "ready", "failed", "unloaded"]
    error: str | None = None


class Readiness(BaseModel):
    ready: bool
    models: list[ModelReadiness]


class Health(BaseModel):
    status: Literal["ok"]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document, as every error response carries."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable problem type.", examples=list(PROBLEM_TYPES))
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do, for a person.")
    errors: list[ErrorItem] | None = Field(None, description="Each invalid field (422 only).")
    error_id: str | None = Field(None, description="Where to look in the server log (500 only).")
    retry_after: int | None = Field(None, description="Seconds to wait before retrying (503).")
    item: int | None = Field(None, description="In an array request, the index of the input "
                             "this error concerns.")


class JobProgress(BaseModel):
    done: int = Field(description="Inputs computed so far.")
    total: int = Field(description="Inputs in the job.")


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self", description="This job.")
    model: str = Field(description="The model that computes it.")


class Job(BaseModel):
    """A job: its status, progress, and once finished its result or error."""

    id: str = Field(description="Unguessable id.")
    model: str
    version: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: str = Field(description="RFC 3339 time, UTC.")
    started_at: str | None
    finished_at: str | None
    expires_at: str | None = Field(description="When a finished job's record is removed.")
    progress: JobProgress
    attempts: int = Field(description="Times a runner started it (more than 1 after a crash).")
    result: Any = Field(None, description="Succeeded jobs only: what predict answers for the "
                        "same body (one output, or an array of outputs).")
    error: Problem | None = Field(None, description="Failed jobs only: why, as a problem "
                                  "document.")
    links: JobLinks
