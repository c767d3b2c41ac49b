"""A replica process: loads one model version once and computes the batches its dispatcher sends.

Run by the supervisor as ``python -m corral.workers replica PLAN MODEL REPLICA ATTEMPT``.
It connects a DEALER socket to its dispatcher's backend, says Hello (loading), runs
``load()``, then says Hello (ready) and serves Work messages one at a time. While
idle it repeats Hello (ready) every second, so a restarted dispatcher learns of it.
Once ``load()`` succeeded it creates ``<pid file>.<replica>.ready``: a replica that
exits without it (``load()`` raised, or the process died while loading) counts as a
failed load attempt for the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import zmq
from pydantic import BaseModel, ValidationError

from .. import metrics
from ..cli.discover import load_server
from ..errors import InvalidInput, new_error_id
from ..log import configure_logging
from ..model import Model
from ..registry.spec import ModelSpec
from ..transport.protocol import Done, Hello, ProtocolError, Work, decode, encode
from .compute import Outcome, compute
from .devices import model_device
from .plan import Plan

logger = logging.getLogger(__name__)

LOAD_FAILED = 3
# load() is tried this many times (with backoff, by the supervisor) before the model is failed.
MAX_LOAD_ATTEMPTS = 3
HEARTBEAT_MS = 1000


def _decode_inputs(spec: ModelSpec, frames: list[bytes]) -> list[BaseModel] | InvalidInput:
    try:
        return [spec.input_type.model_validate_json(f, strict=True) for f in frames]
    except ValidationError as exc:
        return InvalidInput(f"Input not valid for {spec.key}: {exc.error_count()} errors.")


def _send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
    """Never block: with no dispatcher to take it, a message is dropped (it will ask again)."""
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        logger.debug("replica: dispatcher not reachable; message dropped")


def serve_batches(sock: zmq.Socket[bytes], model: Model, spec: ModelSpec, hello: Hello) -> None:
    """Compute Work until the process is stopped."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if not poller.poll(HEARTBEAT_MS):
            _send(sock, encode(hello))
            continue
        try:
            work = decode(sock.recv_multipart())
        except ProtocolError as exc:
            logger.warning("replica of %s dropped a message: %s", spec.key, exc)
            continue
        if not isinstance(work, Work):
            continue
        groups, start = [], 0
        for n in work.groups:
            groups.append(work.inputs[start : start + n])
            start += n
        decoded = [_decode_inputs(spec, g) for g in groups]
        valid = [g for g in decoded if not isinstance(g, InvalidInput)]
        started = time.perf_counter()
        computed = iter(compute(model, spec, valid)) if valid else iter([])
        metrics.PREDICT_DURATION.labels(spec.name).observe(time.perf_counter() - started)
        outcomes: list[Outcome] = [g if isinstance(g, InvalidInput) else next(computed)
                                   for g in decoded]
        meta: list[dict[str, Any]] = []
        outputs: list[bytes] = []
        for outcome in outcomes:
            if isinstance(outcome, list):
                meta.append({"ok": len(outcome)})
                outputs.extend(outcome)
            else:
                meta.append({"error": outcome.to_dict()})
        _send(sock, encode(Done(batch=work.batch, replica=hello.replica, pid=hello.pid,
                                outcomes=meta, outputs=outputs)))


def main(argv: list[str]) -> int:
    plan = Plan.load(argv[0])
    model_index, replica, attempt, starts = (int(a) for a in argv[1:5])
    settings = plan.build_settings()
    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    endpoints = plan.models[model_index]
    spec = load_server(plan.target).catalog(settings).resolve(endpoints.name, endpoints.version)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.IDENTITY, f"r{replica}-{os.getpid()}".encode())
    sock.connect(endpoints.backend)
    if starts:
        metrics.REPLICA_RESTARTS.labels(spec.name).inc()
    hello = Hello(replica=replica, pid=os.getpid(), state="loading")
    sock.send_multipart(encode(hello))

    started = time.monotonic()
    try:
        model = spec.cls()
        model.device = model_device(spec.device_for(replica))
        model.load()
    except Exception as exc:
        error_id = new_error_id()
        logger.error("model %s replica %d: load() raised %s (attempt %d of %d, error id %s)",
                     spec.key, replica, type(exc).__name__, attempt, MAX_LOAD_ATTEMPTS, error_id,
                     exc_info=exc)
        final = attempt >= MAX_LOAD_ATTEMPTS
        hello.state = "failed" if final else "loading"
        hello.error = (f"load() raised {type(exc).__name__}; the server log has the details "
                       f"under error id {error_id}.")
        sock.send_multipart(encode(hello))
        sock.close()  # lingers up to 2 s so the dispatcher hears it
        ctx.term()
        return LOAD_FAILED
    load_seconds = time.monotonic() - started
    metrics.MODEL_LOAD.labels(spec.name).set(load_seconds)
    logger.info("model %s replica %d (pid %d) loaded in %.2fs", spec.key, replica, os.getpid(),
                load_seconds)
    hello.state = "ready"
    Path(f"{endpoints.pid_file}.{replica}.ready").touch()  # the supervisor: load() succeeded
    _send(sock, encode(hello))
    serve_batches(sock, model, spec, hello)
    return 0

