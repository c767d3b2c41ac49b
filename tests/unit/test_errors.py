"""The error table: every problem type crosses a process boundary as data and comes back
as the same class, with what the client sees intact."""

from __future__ import annotations

import pytest

from corral import errors
from corral.errors import (
    PROBLEM_TYPES,
    CorralError,
    InternalError,
    ModelError,
    error_from_dict,
)


def _all_subclasses(cls: type[CorralError]) -> set[type[CorralError]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


# Start-up errors (and the load tester's, which are start-up errors) never cross the wire.
PUBLIC = sorted((c for c in _all_subclasses(CorralError) if not c.__name__.startswith("_")
                 and not issubclass(c, errors.StartupError)), key=lambda c: c.__name__)


def _example(cls: type[CorralError]) -> CorralError:
    if cls is errors.MethodNotAllowed:
        return cls("GET is not allowed", allowed=["POST"])
    if issubclass(cls, (errors.Overloaded, errors.ModelLoading)):
        return cls("later", retry_after=7)
    if cls is errors.InvalidInput:
        return cls("what happened", errors=[{"loc": [0, "x"], "msg": "bad", "type": "t"}])
    return cls("what happened")


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_problem_type_round_trips(cls: type[CorralError]) -> None:
    err = _example(cls)
    back = error_from_dict(err.to_dict())
    assert type(back) is cls
    assert (back.status, back.detail, back.errors, back.headers(), back.extra()) == (
        err.status, err.detail, err.errors, err.headers(), err.extra())
    assert cls.type in PROBLEM_TYPES


def test_the_table_names_method_not_allowed_and_client_closed_request() -> None:
    assert {"method-not-allowed", "client-closed-request", "model-unloaded"} <= set(PROBLEM_TYPES)


def test_corrals_own_failures_are_not_model_errors() -> None:
    assert not issubclass(InternalError, ModelError)
    assert InternalError("x").error_id  # still carries an id for the log


def test_an_unknown_type_from_a_peer_is_a_plain_500() -> None:
    err = error_from_dict({"type": "os.system", "detail": "x", "retry_after": "soon"})
    assert type(err) is CorralError and err.status == 500
