"""Problem documents (RFC 9457) and Corral's one JSON spacing, without Flask.

The HTTP layer answers with them; the jobs runner stores them in job records; both
must write the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorralError


def compact_json(data: Any) -> str:
    """Every JSON body Corral writes itself, success or problem: one spacing, no NaN."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def problem_document(err: CorralError) -> dict[str, Any]:
    """The RFC 9457 document of an error."""
    body = {"type": err.type, "title": err.title, "status": err.status, "detail": err.detail,
            **err.extra()}
    if err.errors is not None:
        body["errors"] = err.errors
    return body


def at_item(err: CorralError, index: int) -> CorralError:
    """An input's own error, as part of an array request: its index goes first in each
    ``loc``, in ``item``, and in the detail."""
    err.detail = f"Item {index}: {err.detail}"
    err.item = index
    if err.errors is not None:
        err.errors = [{**e, "loc": [index, *e.get("loc", [])]} for e in err.errors]
    return err


def output_documents(outputs: list[bytes | CorralError], is_batch: bool,
                     per_item_errors: bool, first: int = 0) -> list[bytes]:
    """The JSON documents of computed outputs, as predict answers them (and a job stores
    them): an input that failed alone raises its error, named by its index (``first`` is
    the index of ``outputs[0]`` in the request) when the body was an array, unless the
    model returns per-item errors: then its problem document takes its place."""
    documents = []
    for i, output in enumerate(outputs):
        if isinstance(output, CorralError):
            if not is_batch:
                raise output
            failed = at_item(output, first + i)
            if not per_item_errors:
                raise failed
            output = compact_json(problem_document(failed)).encode()
        documents.append(output)
    return documents
