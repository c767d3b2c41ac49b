"""Run one batch through a model instance, isolating poison inputs.

Used wherever a replica computes, in-process or in a replica process. When a
batch that holds several requests raises, each request is re-run on its own, so
only the request that caused the failure gets the error.
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

logger = logging.getLogger(__name__)

Outcome = list[bytes] | CorralError


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

    InvalidInput and other CorralErrors pass through; anything else is logged with
    its traceback under a new error id and becomes a ModelError carrying that id.
    """
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


def compute(
    model: Model,
    spec: ModelSpec,
    groups: Sequence[list[BaseModel]],
    run: Callable[[Callable[[], list[bytes]]], list[bytes]] = lambda f: f(),
) -> list[Outcome]:
    """Compute several requests' inputs as one batch; one outcome per group.

    ``groups`` holds each request's inputs, in batch order. ``run`` executes a
    zero-argument call (in-process under gevent it moves the call to an OS thread).
    """
    flat = [x for g in groups for x in g]
    try:
        outputs = run(lambda: predict_json(model, spec, flat))
    except BaseException as exc:  # the model's own code failed (even SystemExit): isolate it
        if len(groups) == 1:
            return [as_client_error(spec, exc)]
        if not isinstance(exc, (InvalidInput, ModelError)):
            logger.info("model %s: batch of %d requests raised; re-running one at a time",
                        spec.key, len(groups))
        return [compute(model, spec, [g], run)[0] for g in groups]
    result: list[Outcome] = []
    start = 0
    for g in groups:
        result.append(outputs[start : start + len(g)])
        start += len(g)
    return result


def outcome_frames(outcomes: list[Outcome]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Outcomes as a Done message carries them: one meta entry per group, outputs flat."""
    meta: list[dict[str, Any]] = []
    outputs: list[bytes] = []
    for outcome in outcomes:
        if isinstance(outcome, list):
            meta.append({"ok": len(outcome)})
            outputs.extend(outcome)
        else:
            meta.append({"error": outcome.to_dict()})
    return meta, outputs
