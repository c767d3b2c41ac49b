"""ModelSpec: what Corral knows about one declared model version, checked at start-up."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, RootModel

from ..config import Settings
from ..errors import CorralError, ModelError, StartupError, new_error_id
from ..model import NO_BATCHING, Batching, Model

logger = logging.getLogger(__name__)

_MIN_SIZE = 1e-6  # sizes are compared by ratio: zero would never be near anything

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DEVICE_RE = re.compile(r"^(cpu|cuda|gpu|cuda:\d+|gpu:\d+|\d+)$")
PLACEMENTS = ("process", "inline")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelKey:
    """A model version's identity: its URL name and version."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """One model version with its types and effective settings."""

    cls: type[Model]
    key: ModelKey
    input_type: type[BaseModel]
    output_type: type[BaseModel]
    batching: Batching
    replicas: int
    default: bool
    description: str
    devices: tuple[str, ...] = ()
    per_item_errors: bool = False
    max_requests: int | None = None
    placement: str = "process"  # or "inline": in each HTTP worker of corral serve
    size_of: Callable[[Any], float] | None = None  # the model's input_size, if declared

    @property
    def inline(self) -> bool:
        return self.placement == "inline"

    def input_size(self, values: list[Any]) -> float:
        """The largest ``input_size()`` of these validated inputs (the model declares one).

        Raises ModelError (a 500 whose traceback is logged under its error id) when the
        model's function raises or returns something other than a positive number.
        """
        assert self.size_of is not None
        try:
            sizes = [self.size_of(v) for v in values]
            if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in sizes):
                raise TypeError(f"input_size() must return a number; got {sizes[:4]!r}")
            size = float(max(sizes))
            if not 0 <= size < math.inf:
                raise ValueError(f"input_size() must return a number >= 0; got {size!r}")
        except CorralError as exc:
            if exc.status < 500:  # InvalidInput and the like: the input's own fault
                raise
            raise ModelError(f"Model {self.key} could not size this input.") from None
        except Exception as exc:
            error_id = new_error_id()
            logger.error("model %s: input_size() failed (error id %s)", self.key, error_id,
                         exc_info=(type(exc), exc, exc.__traceback__))
            raise ModelError(f"Model {self.key} could not size this input; the server log has "
                             f"the details under error id {error_id}.",
                             error_id=error_id) from None
        return max(size, _MIN_SIZE)  # an empty text is a size too: the smallest

    def device_for(self, replica: int) -> str | None:
        """The device replica ``replica`` runs on, or None when the model names none."""
        return self.devices[replica % len(self.devices)] if self.devices else None

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def version(self) -> str:
        return self.key.version


def kebab_name(class_name: str) -> str:
    """``SentimentModel`` -> ``sentiment``; ``HTTPLogModel`` -> ``http-log``."""
    base = class_name[: -len("Model")] if class_name.endswith("Model") and class_name != "Model" else class_name
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z0-9]|\b|_|$)|[A-Z]?[a-z0-9]+|[A-Z]+", base)
    return "-".join(w.lower() for w in words) or class_name.lower()


def build_spec(cls: type[Model], settings: Settings) -> ModelSpec:
    """Check a model class and combine it with its overrides from the settings.

    Raises StartupError with a message that names the class and the fix.
    """
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, Model)) or cls is Model:
        raise StartupError(f"{where} is not a subclass of corral.Model.")
    if cls.predict is Model.predict:
        raise StartupError(f"{where} must implement predict(self, batch: list[In]) -> list[Out].")

    name = cls.name or kebab_name(cls.__name__)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StartupError(
            f"{where}: model name {name!r} is not usable in a URL; use lowercase letters, "
            "digits, '-', '_' or '.', starting with a letter or digit."
        )
    version = cls.version
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise StartupError(
            f"{where}: version {version!r} must be a string of letters, digits, '.', '-' or '_', "
            "such as \"1\" or \"2024-05\"."
        )
    input_type, output_type = _io_types(cls, where)
    overrides = settings.overrides_for(name)

    batching = cls.batching or NO_BATCHING
    if not isinstance(batching, Batching):
        raise StartupError(f"{where}: batching must be a corral.Batching, not {type(batching).__name__}.")
    try:
        batching = Batching(
            max_size=overrides.max_size or batching.max_size,
            max_wait_ms=batching.max_wait_ms if overrides.max_wait_ms is None else overrides.max_wait_ms,
            max_queue=overrides.max_queue or batching.max_queue,
            timeout=overrides.timeout or batching.timeout,
            size_ratio=batching.size_ratio,
        )
    except ValueError as exc:
        raise StartupError(f"{where}: {exc}") from None
    replicas = overrides.replicas or cls.replicas
    devices = tuple(overrides.devices if overrides.devices is not None else cls.devices or ())
    for device in devices:
        if not _DEVICE_RE.match(device):
            raise StartupError(
                f"{where}: device {device!r} is not one of 'cpu', 'cuda', 'cuda:N' or 'N'."
            )
    size_of = cls.input_size
    if size_of is not None and not _takes_one_argument(size_of):
        raise StartupError(f"{where}: input_size must be a function of one input, called "
                           "without an instance: declare it as `@staticmethod def "
                           "input_size(item) -> float` (or set it to None).")
    placement = overrides.placement or cls.placement
    if placement not in PLACEMENTS:
        raise StartupError(
            f"{where}: placement must be \"process\" (replicas in processes of their own) or "
            f"\"inline\" (inside each HTTP worker), not {placement!r}."
        )
    max_requests = overrides.max_requests or cls.max_requests
    if placement == "inline" and max_requests:
        raise StartupError(
            f"{where}: max_requests replaces replica processes; an inline model lives in the "
            "HTTP workers, which Gunicorn's --max-requests replaces instead.")
    if placement == "inline" and devices and any(d != "cpu" for d in devices):
        raise StartupError(
            f"{where}: an inline model runs inside every HTTP worker, which cannot each own a "
            f"GPU; use placement = \"process\" for devices {list(devices)}."
        )
    if not isinstance(replicas, int) or replicas < 1:
        raise StartupError(f"{where}: replicas must be a positive integer, not {replicas!r}.")

    return ModelSpec(
        cls=cls,
        key=ModelKey(name, version),
        input_type=input_type,
        output_type=output_type,
        batching=batching,
        replicas=replicas,
        default=bool(cls.default),
        # The class's own docstring only: never corral.Model's, nor a base class's.
        description=inspect.cleandoc(cls.__dict__.get("__doc__") or ""),
        devices=devices,
        per_item_errors=bool(cls.per_item_errors),
        max_requests=max_requests,
        placement=placement,
        size_of=size_of,
    )


def _takes_one_argument(fn: Any) -> bool:
    """Whether ``fn(item)`` is a valid call (a staticmethod, classmethod or function)."""
    if not callable(fn):
        return False
    try:
        inspect.signature(fn).bind(object())
    except TypeError:
        return False
    except ValueError:  # a builtin without a signature: let it be tried
        return True
    return True


def _io_types(cls: type[Model], where: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """Read ``In`` and ``Out`` from ``def predict(self, batch: list[In]) -> list[Out]``."""
    try:
        hints = typing.get_type_hints(cls.predict)
    except Exception as exc:  # a NameError in a forward reference, typically
        raise StartupError(f"{where}.predict: cannot resolve its type annotations: {exc}") from None
    params = [p for p in inspect.signature(cls.predict).parameters if p != "self"]
    if len(params) != 1:
        raise StartupError(f"{where}.predict must take exactly one argument, the batch (a list).")
    return (
        _element_type(hints.get(params[0]), where, "input", f"the '{params[0]}' argument"),
        _element_type(hints.get("return"), where, "output", "the return annotation"),
    )


def _element_type(hint: Any, where: str, role: str, what: str) -> type[BaseModel]:
    example = "def predict(self, batch: list[MyInput]) -> list[MyOutput]"
    if hint is None:
        raise StartupError(f"{where}.predict: {what} needs a type, as in `{example}`.")
    if typing.get_origin(hint) is not list or len(typing.get_args(hint)) != 1:
        raise StartupError(
            f"{where}.predict: {what} must be a list of one pydantic model, as in `{example}`; "
            f"found {hint!r}."
        )
    (element,) = typing.get_args(hint)
    if not (isinstance(element, type) and issubclass(element, BaseModel)) or issubclass(
        element, RootModel
    ):
        raise StartupError(
            f"{where}.predict: the {role} type must be a pydantic model with fields (a JSON object); "
            f"found {element!r}. Wrap the value in a field, e.g. "
            f"`class {role.capitalize()}(BaseModel): value: {getattr(element, '__name__', element)}`."
        )
    return element
