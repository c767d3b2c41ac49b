"""ModelStatus: what the dispatch core says of one model version, to the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import CorralError, ModelFailed, ModelLoading, ModelUnloaded

State = Literal["loading", "ready", "failed", "unloaded"]


@dataclass(frozen=True)
class ModelStatus:
    """One model version's state, how many replicas are ready and how many are wanted."""

    state: State
    replicas_ready: int
    replicas: int
    error: str | None = None

    def refusal(self, key: object) -> CorralError | None:
        """Why a request to this model is refused now, or None if it may be queued."""
        if self.state == "unloaded":
            return ModelUnloaded(f"Model {key} is unloaded; an administrator can load it.")
        if self.state == "failed":
            return ModelFailed(f"Model {key} failed to load: {self.error}")
        if self.state == "loading":
            return ModelLoading(f"Model {key} is still loading; retry shortly.", retry_after=2)
        return None
