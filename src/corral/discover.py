"""Finding the models to serve from ``path/to/app.py``, ``module:attr`` or ``path.py:attr``."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import StartupError
from .model import Model
from .server import Server

logger = logging.getLogger(__name__)

# Frameworks whose presence in an HTTP worker means app.py imports them at the top.
HEAVY_MODULES = ("torch", "tensorflow", "jax")


def load_server(target: str) -> Server:
    """The Server a target names, or a StartupError that says what to write instead.

    Without ``:attr``, a module's single Server is used; failing that, every
    corral.Model subclass the module itself defines (not the ones it imports).
    """
    location, _, attr = target.partition(":")
    module = _import(location)
    if attr:
        if not hasattr(module, attr):
            raise StartupError(f"{location} has no attribute {attr!r}.")
        return _as_server(getattr(module, attr), f"{location}:{attr}")
    servers = {k: v for k, v in vars(module).items() if isinstance(v, Server)}
    if len(servers) == 1:
        return next(iter(servers.values()))
    if len(servers) > 1:
        names = ", ".join(f"{location}:{k}" for k in sorted(servers))
        raise StartupError(f"{location} defines several Servers; name one: {names}.")
    models = [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, Model) and v is not Model
        and v.__module__ == module.__name__
    ]
    if not models:
        raise StartupError(
            f"{location} defines no corral.Model subclass and no corral.Server. Define a model "
            "class there, or point at one with module:attr."
        )
    return Server(models)


def warn_heavy_imports(where: str) -> None:
    """Warn when a deep-learning framework is already imported where no model runs."""
    loaded = [m for m in HEAVY_MODULES if m in sys.modules]
    if loaded:
        logger.warning(
            "%s imported %s at start-up; HTTP workers import app.py only for its types, so "
            "import heavy frameworks inside Model.load() to keep them out of every process.",
            where, ", ".join(loaded),
        )


def _as_server(obj: Any, where: str) -> Server:
    if isinstance(obj, Server):
        return obj
    if isinstance(obj, type) and issubclass(obj, Model):
        return Server([obj])
    if isinstance(obj, (list, tuple)) and obj and all(
        isinstance(m, type) and issubclass(m, Model) for m in obj
    ):
        return Server(list(obj))
    raise StartupError(
        f"{where} is a {type(obj).__name__}; it should be a corral.Server, a corral.Model "
        "subclass or a list of them."
    )


def _import(location: str) -> ModuleType:
    path = Path(location)
    try:
        if location.endswith(".py") or "/" in location:
            if not path.is_file():
                raise StartupError(f"No such file: {location}.")
            return _import_file(path.resolve())
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(location)
    except StartupError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == location.split(".")[0]:
            raise StartupError(
                f"No module named {location!r} (nor a file {location}.py here)."
            ) from None
        raise StartupError(f"Importing {location} failed: {_describe(exc)}") from None
    except Exception as exc:  # the user's module raised while being imported
        raise StartupError(f"Importing {location} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """The exception and the innermost line of the user's code that raised it."""
    where = ""
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if "importlib" not in frame.filename:
                where = f" ({frame.filename}, line {frame.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def _import_file(path: Path) -> ModuleType:
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing
    if existing is not None:
        name = f"corral_app_{name}"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # so that app.py can import its siblings
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StartupError(f"Cannot import {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
