"""Catalog: the declared models by name and version, and the default-version rule."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ..errors import ModelNotFound, StartupError, VersionNotFound
from .spec import ModelKey, ModelSpec


_NUMERIC = re.compile(r"^\d+(\.\d+)*$")


def version_order(version: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key: numeric versions ("2", "1.10") compare as numbers, the rest as strings.

    Numbers compare part by part ("1.10" > "1.9"); a numeric version ranks above a
    non-numeric one, so a label such as "beta" never becomes the default by accident.
    """
    if _NUMERIC.match(version):
        return (1, tuple(int(p) for p in version.split(".")), "")
    return (0, (), version)


class Catalog:
    """Every served model version; answers "which spec does this path mean"."""

    def check_overrides(self, names: Iterable[str]) -> None:
        """Refuse per-model settings that name no served model (a typo would be ignored)."""
        known = {n.replace("-", "_") for n in self._by_name}
        for name in names:
            if name.lower().replace("-", "_") not in known:
                raise StartupError(
                    f"CORRAL_MODELS__{name.upper()}__...: no model named {name!r}; served models: "
                    f"{', '.join(self.names())}."
                )

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._by_name: dict[str, dict[str, ModelSpec]] = {}
        for spec in specs:
            versions = self._by_name.setdefault(spec.name, {})
            if spec.version in versions:
                other = versions[spec.version].cls
                raise StartupError(
                    f"Two models are named {spec.name!r} with version {spec.version!r}: "
                    f"{other.__module__}.{other.__qualname__} and "
                    f"{spec.cls.__module__}.{spec.cls.__qualname__}. Give one another version or name."
                )
            versions[spec.version] = spec
        if not self._by_name:
            raise StartupError("No models to serve: declare at least one corral.Model subclass.")
        self._defaults = {name: self._pick_default(name, v) for name, v in self._by_name.items()}

    @staticmethod
    def _pick_default(name: str, versions: dict[str, ModelSpec]) -> str:
        marked = [v for v, spec in versions.items() if spec.default]
        if len(marked) > 1:
            raise StartupError(
                f"Model {name!r} marks several versions as default ({', '.join(sorted(marked))}); "
                "mark at most one."
            )
        if marked:
            return marked[0]
        return max(versions, key=version_order)

    def __iter__(self) -> Iterator[ModelSpec]:
        for name in sorted(self._by_name):
            yield from self.versions(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[ModelSpec]:
        """The specs of one model, oldest version first."""
        versions = self._by_name[name]
        return [versions[v] for v in sorted(versions, key=version_order)]

    def default_version(self, name: str) -> str:
        return self._defaults[name]

    def keys(self) -> list[ModelKey]:
        return [spec.key for spec in self]

    def resolve(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec for a name and optional version, or a 404 error listing what exists."""
        versions = self._by_name.get(name)
        if versions is None:
            raise ModelNotFound(
                f"No model named {name!r}; known models: {', '.join(self.names())}."
            )
        if version is None:
            return versions[self._defaults[name]]
        spec = versions.get(version)
        if spec is None:
            known = ", ".join(sorted(versions, key=version_order))
            raise VersionNotFound(f"Model {name!r} has no version {version!r}; known: {known}.")
        return spec
