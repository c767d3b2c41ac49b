"""The one settings object.

Values come from, in rising precedence: field defaults, environment variables
prefixed ``CORRAL_`` (nested groups with ``__``), and CLI flags passed as keyword
arguments. Per-model overrides are ``CORRAL_MODELS__<NAME>__<FIELD>`` and take
precedence over the model class's attributes. Settings are built once, by the CLI
or the WSGI entry point, and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from typing import Literal

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelOverrides(BaseModel):
    """Per-model settings that override the model class's attributes when set."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    max_size: int | None = Field(None, ge=1, description="Most inputs in one predict call.")
    max_wait_ms: float | None = Field(None, ge=0, description="Longest wait for a batch to fill.")
    max_queue: int | None = Field(None, ge=1, description="Most inputs waiting before 503.")
    timeout: float | None = Field(None, gt=0, description="Seconds before a request gets 504.")
    replicas: int | None = Field(None, ge=1, description="Copies of the model serving requests.")
    devices: list[str] | None = Field(
        None, description='Devices for the replicas, as JSON: ["cuda:0", "cuda:1"] or ["cpu"].'
    )
    max_requests: int | None = Field(
        None, ge=1, description="Inputs a replica computes before it is replaced by a fresh "
        "one (finishing its batch first); unset: never.",
    )
    placement: Literal["process", "inline"] | None = Field(
        None, description='Where replicas run: "process" (their own processes) or "inline" '
        "(inside each HTTP worker).",
    )


class Settings(BaseSettings):
    """Every setting of a Corral server; ``corral serve --help`` lists them."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    app: str | None = Field(
        None, description="What corral.wsgi:application serves: path/to/app.py or module:attr."
    )
    runtime_dir: str | None = Field(
        None, description="Runtime directory of the process tree (sockets, state). corral serve "
        "makes a fresh one under /tmp unless set; a WSGI app given the directory of a "
        "running server sends its requests there instead of loading models itself.",
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    workers: int = Field(1, ge=1, description="HTTP worker processes.")
    threads: int = Field(
        64, ge=1, description="Threads per gthread HTTP worker: the most requests one worker "
        "has in flight; high enough for batches to fill when clients spread unevenly "
        "over workers."
    )
    worker_class: Literal["gthread", "gevent"] = Field(
        "gthread", description="Gunicorn worker class for the HTTP workers; gevent serves "
        "inline models faster (their requests fill each batch as greenlets)."
    )
    worker_connections: int = Field(
        1000, ge=1, description="Most simultaneous clients per gevent HTTP worker."
    )
    timeout: int = Field(
        120, ge=1, description="Seconds before a silent HTTP worker is killed and replaced."
    )
    max_requests: int = Field(
        0, ge=0, description="Requests an HTTP worker serves before Gunicorn replaces it "
        "(gracefully); 0: never.",
    )
    max_requests_jitter: int = Field(
        0, ge=0, description="Up to this many more, at random, so workers are not all "
        "replaced at once.",
    )
    graceful_timeout: int = Field(
        30, ge=0, description="Seconds in-flight requests get to finish on shutdown."
    )
    keepalive: int = Field(
        75, ge=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest request body accepted; larger gets 413."
    )
    max_items: int = Field(
        1024, ge=1, description="Most inputs in one JSON-array request; more gets 422."
    )
    max_json_depth: int = Field(
        32, ge=2, description="Deepest JSON nesting accepted; deeper gets 400."
    )
    stall_grace: float = Field(
        30.0, gt=0, description="Seconds a replica may stay in predict() past every deadline "
        "of its batch before it is killed and replaced."
    )
    warm_up: bool = Field(
        True, description="Call each replica's predict() once, with an input built from the "
        "schema's examples, after load() and before it reports ready.",
    )
    replica_start: Literal["fork", "spawn"] = Field(
        "fork", description="How corral serve starts replica processes: forked from a "
        "zygote that has imported the app (they share its memory), or spawned as fresh "
        "interpreters (for apps that start threads or a GPU runtime at import).",
    )
    inline_memory_warn_mb: int = Field(
        256, ge=1, description="Under corral serve, an HTTP worker logs a warning when its "
        "inline models have grown it by more than this many MiB (each worker holds its own "
        "copies).",
    )
    ready_with_failed_models: bool = Field(
        False, description="/readyz answers 200 while some models have failed to load, if every "
        "other model is ready. Off: any failed model makes the server not ready.",
    )
    exit_when_all_failed: bool = Field(
        False, description="Stop corral serve with exit code 1 when every model has failed to "
        "load, so that an orchestrator restarts it.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description='Origins a browser may call the API from, as JSON '
        '(["https://app.example.com"]; ["*"] for any); empty: CORS off.',
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API (load, unload, replicas); the admin "
        "API is off while unset.",
    )
    data_dir: str = Field(
        ".corral", validate_default=True,
        description="Directory of the embedded job store (jobs.sqlite3); relative to where "
        "the server starts.")
    broker_url: str | None = Field(
        None, description="Celery broker for jobs (redis://host:6379/0 or "
        "amqp://user:pass@host:5672//); unset: jobs run embedded, in this server.")
    job_store_url: str | None = Field(
        None, description="Where job records live when a broker is set: redis://... or "
        "sqlite:////dir (instances on one machine); default: the broker, if it is Redis.")
    job_queue: str = Field("corral-jobs", description="Broker queue the job tasks go to.")
    job_ttl: float = Field(
        86400.0, gt=0, description="Seconds a finished job's result is kept, then removed.")
    job_timeout: float = Field(
        3600.0, gt=0, description="Seconds a job may run before it fails with a timeout.")
    job_lease: float = Field(
        30.0, ge=1, description="Seconds a runner holds a job between renewals; a job whose "
        "runner died runs again after this.")
    job_max_attempts: int = Field(
        3, ge=1, description="Times a job is started (its runner dying each time) before it "
        "fails; also the tries of inputs whose replica crashed.")
    job_concurrency: int = Field(
        16, ge=1, description="Jobs the embedded runner works on at once (threads that "
        "feed the dispatcher; more of them make bigger batches of one-input jobs).")
    worker_concurrency: int = Field(
        4, ge=1, description="Processes of a corral worker (Celery prefork), each running "
        "one job at a time.")
    job_max_items: int = Field(
        100_000, ge=1, description="Most inputs in one job.")
    job_max_wait: float = Field(
        30.0, ge=0, description="Longest ?wait= a GET /v1/jobs/{id} may ask for, in seconds.")
    job_redeliver_after: float = Field(
        300.0, gt=0, description="With a broker: seconds a job may stay queued before its task "
        "is sent again, in case the broker lost it.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the corral.* loggers."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as plain text, or as JSON objects (one per line).")
    access_log: bool = Field(
        False, description="Log one line per request: client, method, path, status, latency, "
        "model, batch size and request id.")
    proxy_hops: int = Field(
        0, ge=0, description="Proxies in front of the server (nginx: 1) whose X-Forwarded-For, "
        "-Proto and -Host are trusted for the client's address; 0: none.")
    models: dict[str, ModelOverrides] = Field(
        default_factory=dict,
        description="Per-model overrides, e.g. CORRAL_MODELS__IRIS__MAX_SIZE=64.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Made absolute where the settings are built, so every process of a server (and a
        # WSGI app started elsewhere against its runtime directory) uses the same one.
        return str(Path(value).expanduser().absolute())

    def overrides_for(self, model_name: str) -> ModelOverrides:
        """The overrides for one model; env keys use ``_`` for the name's ``-``."""
        key = model_name.lower().replace("-", "_")
        for name, overrides in self.models.items():
            if name.lower().replace("-", "_") == key:
                return overrides
        return ModelOverrides()
