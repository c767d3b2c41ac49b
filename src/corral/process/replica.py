"""A replica process: loads one model version once and computes the batches the dispatcher sends.

Run by the supervisor as ``python -m corral.process replica RUNTIME_DIR NAME:VERSION
INDEX ATTEMPT STARTS``. It connects to the dispatcher's backend socket, says Hello
(loading), runs ``load()``, then says Hello (ready) and serves Work messages one at
a time. While idle it repeats Hello (ready) every second, connecting again if the
dispatcher went away, so a restarted dispatcher learns of it. It exits when the
dispatcher says Stop (scaled down or unloaded). Once ``load()`` succeeded it creates its ready marker in the
runtime directory: a replica that exits without one (``load()`` raised, or the
process died while loading) counts as a failed load attempt for the supervisor.

Each input arrives as the JSON document the HTTP worker validated, and is
validated here by the same function (:func:`corral.schema.inputs.validate_item`),
so both see the same value.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from pydantic import BaseModel, ValidationError

from .. import metrics
from ..discover import load_server
from ..dispatch.compute import (
    Outcome,
    as_client_error,
    compute,
    load_error,
    outcome_frames,
    split_groups,
    warm_up,
)
from ..dispatch.devices import model_device
from ..errors import CorralError, InvalidInput, new_error_id
from ..log import REQUEST_IDS, configure_logging
from ..model import Model
from ..registry.spec import ModelSpec
from ..schema.inputs import validate_item
from ..transport.protocol import Done, Hello, ProtocolError, Stop, Work, decode, encode
from ..transport.stream import Link, SendFailed
from .runtime import Runtime
from .title import set_title

logger = logging.getLogger(__name__)

LOAD_FAILED = 3
# load() is tried this many times (with backoff, by the supervisor) before the model is failed.
MAX_LOAD_ATTEMPTS = 3
HEARTBEAT = 1.0
# How long a message to the dispatcher may wait for it to read (a Done can be large).
_SEND_WAIT = 10.0


def _decode_inputs(spec: ModelSpec, frames: list[bytes]) -> list[BaseModel] | CorralError:
    try:
        return [validate_item(spec.input_type, f) for f in frames]
    except ValidationError as exc:  # the HTTP worker validated these: a version mismatch
        return InvalidInput(f"Input not valid for {spec.key}: {exc.error_count()} errors.")
    except Exception as exc:  # a validator of the model's own that raised something else
        return as_client_error(spec, exc)


def _send(link: Link, msg: Hello | Done) -> None:
    """Never fail: with no dispatcher to take it, a message is dropped (it will ask again)."""
    try:
        link.send(encode(msg), _SEND_WAIT)
    except SendFailed:
        logger.debug("replica: dispatcher not reachable; message dropped")


def _receive(link: Link) -> list[list[bytes]]:
    """The messages that arrive within a heartbeat (none: time to say Hello again). A
    large Work comes in many pieces: they are read until it is whole."""
    if link.sock is None:  # no dispatcher since the last Hello: wait, then connect again
        time.sleep(HEARTBEAT)
        return []
    deadline = time.monotonic() + HEARTBEAT
    while (remaining := deadline - time.monotonic()) > 0:
        received = link.receive(remaining)
        if received is None:  # the dispatcher went away: the next Hello connects again
            return []
        if received:
            return received
    return []


def serve_batches(link: Link, model: Model, spec: ModelSpec, hello: Hello) -> None:
    """Compute Work until the dispatcher says Stop.

    After ``spec.max_requests`` inputs the replica says it is retiring: the dispatcher
    gives it no new work and tells it to stop once its batch is done, and the supervisor
    starts a fresh one.
    """
    inputs_done = 0
    while True:
        received = _receive(link)
        if not received:
            _send(link, hello)  # "ready", or "retiring" until the dispatcher says Stop
            continue
        for frames in received:
            try:
                work = decode(frames)
            except ProtocolError as exc:
                logger.warning("replica of %s dropped a message: %s", spec.key, exc)
                continue
            if isinstance(work, Stop):
                logger.info("model %s replica %d (pid %d) stopping: no longer wanted",
                            spec.key, hello.replica, hello.pid)
                return
            if not isinstance(work, Work):
                continue
            _send(link, compute_work(model, spec, hello, work))
            inputs_done += len(work.inputs)
            if spec.max_requests and inputs_done >= spec.max_requests and hello.state == "ready":
                logger.info("model %s replica %d (pid %d) computed %d inputs; retiring",
                            spec.key, hello.replica, hello.pid, inputs_done)
                hello.state = "retiring"
                _send(link, hello)


def compute_work(model: Model, spec: ModelSpec, hello: Hello, work: Work) -> Done:
    """One batch's outcome, each request's group apart."""
    decoded = [_decode_inputs(spec, g) for g in split_groups(work)]
    valid = [g for g in decoded if not isinstance(g, CorralError)]
    started = time.perf_counter()
    token = REQUEST_IDS.set(",".join(i for i in work.request_ids if i))
    try:
        computed = iter(compute(model, spec, valid)) if valid else iter([])
    finally:
        REQUEST_IDS.reset(token)
    metrics.labelled(metrics.PREDICT_DURATION, spec.name).observe(time.perf_counter() - started)
    outcomes: list[Outcome] = [g if isinstance(g, CorralError) else next(computed)
                               for g in decoded]
    meta, outputs = outcome_frames(outcomes)
    return Done(batch=work.batch, model=hello.model, replica=hello.replica, pid=hello.pid,
                outcomes=meta, outputs=outputs)


def main(argv: list[str]) -> int:
    runtime = Runtime(argv[0])
    key = argv[1]
    replica, attempt, starts = (int(a) for a in argv[2:5])
    set_title(f"replica {key} #{replica}", runtime.path)
    target, settings = runtime.read_plan()
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name, _, version = key.rpartition(":")
    spec = load_server(target).catalog(settings).resolve(name, version)

    link = Link(runtime.backend)
    if starts:
        metrics.REPLICA_RESTARTS.labels(spec.name).inc()
    hello = Hello(model=key, replica=replica, pid=os.getpid(), state="loading")
    _send(link, hello)

    started = time.monotonic()
    try:
        model = spec.cls()
        model.device = model_device(spec.device_for(replica))
        model.load()
        if settings.warm_up:
            warm_up(model, spec)
    except Exception as exc:
        error_id = new_error_id()
        logger.error("model %s replica %d: load() raised %s (attempt %d of %d, error id %s)",
                     spec.key, replica, type(exc).__name__, attempt, MAX_LOAD_ATTEMPTS, error_id,
                     exc_info=exc)
        final = attempt >= MAX_LOAD_ATTEMPTS
        hello.state = "failed" if final else "loading"
        hello.error = load_error(exc, error_id)
        runtime.load_error_file(key, replica).write_text(hello.error)  # for the supervisor
        _send(link, hello)  # written before the exit: the dispatcher reads it after
        link.close()
        return LOAD_FAILED
    load_seconds = time.monotonic() - started
    metrics.MODEL_LOAD.labels(spec.name).set(load_seconds)
    logger.info("model %s replica %d (pid %d) loaded in %.2fs", spec.key, replica, os.getpid(),
                load_seconds)
    hello.state = "ready"
    runtime.ready_marker(key, replica).touch()  # the supervisor: load() succeeded
    _send(link, hello)
    serve_batches(link, model, spec, hello)
    link.close()
    return 0
