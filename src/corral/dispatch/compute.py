"""Run one batch through a model instance, isolating poison inputs.

Used wherever a replica computes, in-process or in a replica process. When a
batch raises, its requests are re-run one at a time, and a request of several
inputs one input at a time, so only the inputs that caused the failure get an
error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from ..errors import CorralError, InvalidInput, ModelError, new_error_id
from ..model import Model
from ..registry.spec import ModelSpec
from ..schema.inputs import example_input
from ..transport.protocol import Work

logger = logging.getLogger(__name__)

# One group's outcome: an output or an error per input, or one error for the whole group.
Outcome = list[bytes | CorralError] | CorralError


def predict_json(model: Model, spec: ModelSpec, inputs: list[BaseModel]) -> list[bytes]:
    """Call ``predict`` and encode its outputs as JSON documents, checking them.

    Raises whatever ``predict`` raises, or ModelError when the outputs are not a
    list of the declared output type of the right length, or hold a number JSON
    cannot carry (NaN, infinity).
    """
    outputs = model.predict(inputs)
    if not isinstance(outputs, list) or len(outputs) != len(inputs):
        got = f"a list of {len(outputs)}" if isinstance(outputs, list) else type(outputs).__name__
        raise _bad_output(spec, f"predict() returned {got} for {len(inputs)} inputs")
    out_type = spec.output_type
    result = []
    for i, out in enumerate(outputs):
        try:
            if not isinstance(out, out_type):
                out = out_type.model_validate(out)
            result.append(_to_json(out))
        except (TypeError, ValueError) as exc:
            raise _bad_output(spec, f"output {i} is not a valid {out_type.__name__}: {exc}") from None
    return result


def _to_json(out: BaseModel) -> bytes:
    """The output as JSON; ValueError if it holds NaN or infinity.

    pydantic writes NaN and infinity as null, so only an output with a null in it
    takes the slower, exact path that refuses them.
    """
    data = out.model_dump_json().encode()
    if b"null" in data or b"Infinity" in data or b"NaN" in data:
        json.dumps(out.model_dump(mode="json"), allow_nan=False)
    return data


def _bad_output(spec: ModelSpec, what: str) -> ModelError:
    err = ModelError(f"Model {spec.key} returned an invalid result.")
    logger.error("model %s: %s (error id %s)", spec.key, what, err.error_id)
    return err


def as_client_error(spec: ModelSpec, exc: BaseException) -> CorralError:
    """What the client is told about an exception raised by a model.

    CorralErrors pass through (an InvalidInput without ``errors`` gets one entry with
    its message); anything else is logged with its traceback under a new error id and
    becomes a ModelError carrying that id.
    """
    if isinstance(exc, InvalidInput) and exc.errors is None:
        exc.errors = [{"loc": [], "msg": exc.detail, "type": "invalid_input"}]
    if isinstance(exc, CorralError):
        return exc
    error_id = new_error_id()
    logger.error(
        "model %s raised %s (error id %s)", spec.key, type(exc).__name__, error_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return ModelError(
        f"Model {spec.key} failed on this input; the server log has the details "
        f"under error id {error_id}.",
        error_id=error_id,
    )


def warm_up(model: Model, spec: ModelSpec) -> None:
    """One predict() on an input built from the schema's examples, after load() and before
    the replica reports ready: the first client does not pay for lazy initialisation, and a
    model that cannot predict fails as its load() would. Skipped when the examples do not
    make a valid input. Raises what predict() raises."""
    example = example_input(spec.input_type)
    if example is None:
        logger.debug("model %s: no example input in its schema; no warm-up", spec.key)
        return
    predict_json(model, spec, [example])


def load_error(exc: BaseException, error_id: str) -> str:
    """What ``GET /v1/models/{name}`` says of a failed load(): type and message, never the
    traceback (that is in the server log under ``error_id``)."""
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:297] + "..."
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"load() raised {what} (error id {error_id})"


def compute(
    model: Model,
    spec: ModelSpec,
    groups: Sequence[list[BaseModel]],
    run: Callable[[Callable[[], list[bytes]]], list[bytes]] = lambda f: f(),
) -> list[Outcome]:
    """Compute several requests' inputs as one batch; one outcome per group.

    ``groups`` holds each request's inputs, in batch order; each outcome holds one
    output (JSON) or one error per input. When the batch raises, each request is run
    alone; when a request of several inputs raises, each of its inputs is run alone.
    So only the inputs that fail get an error, each logged once under its own id.
    ``run`` executes a zero-argument call (in-process under gevent it moves the call
    to an OS thread).
    """
    flat = [x for g in groups for x in g]
    failure: BaseException | None = None
    try:
        outputs = run(lambda: predict_json(model, spec, flat))
    except BaseException as exc:  # the model's own code failed (even SystemExit): isolate it
        failure = exc
    # Outside the except block, so that one input's traceback is never chained to another's.
    if failure is None:
        result: list[Outcome] = []
        start = 0
        for g in groups:
            result.append(list(outputs[start : start + len(g)]))
            start += len(g)
        return result
    if len(flat) == 1:
        return [[as_client_error(spec, failure)]]
    if len(groups) > 1:
        logger.info("model %s: a batch of %d inputs from %d requests raised %s; computing "
                    "each request alone", spec.key, len(flat), len(groups),
                    type(failure).__name__)
        return [compute(model, spec, [g], run)[0] for g in groups]
    logger.info("model %s: a request of %d inputs raised %s; computing each input alone",
                spec.key, len(flat), type(failure).__name__)
    alone = [compute(model, spec, [[x]], run)[0] for x in flat]
    return [[o if isinstance(o, CorralError) else o[0] for o in alone]]


def split_groups(work: Work) -> list[list[Any]]:
    """A Work message's inputs, one list per request, in batch order."""
    groups: list[list[Any]] = []
    start = 0
    for n in work.groups:
        groups.append(work.inputs[start : start + n])
        start += n
    return groups


def outcome_frames(outcomes: list[Outcome]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Outcomes as a Done message carries them: one meta entry per group, outputs flat.

    ``{"ok": n}`` when all n inputs of the group have an output (n frames follow);
    ``{"items": [null | error, ...]}`` when some failed (a frame follows for each null);
    ``{"error": {...}}`` when the whole group failed before computing.
    """
    meta: list[dict[str, Any]] = []
    outputs: list[bytes] = []
    for outcome in outcomes:
        if isinstance(outcome, CorralError):
            meta.append({"error": outcome.to_dict()})
            continue
        good = [o for o in outcome if isinstance(o, bytes)]
        outputs.extend(good)
        if len(good) == len(outcome):
            meta.append({"ok": len(good)})
        else:
            meta.append({"items": [None if isinstance(o, bytes) else o.to_dict()
                                   for o in outcome]})
    return meta, outputs
