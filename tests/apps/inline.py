"""An app for end-to-end tests of inline placement: the same model inline and in a process,
an inline model that grows its worker at load, and one whose load() fails."""

from __future__ import annotations

import corral
from tests.fixtures import BrokenLoadModel, SumModel


class InlineSumModel(SumModel):
    """SumModel inside each HTTP worker."""

    name = "inline-sum"
    placement = "inline"


class GrowingModel(SumModel):
    """Inline, and holds 48 MiB of its own from load() on."""

    name = "growing"
    placement = "inline"

    def load(self) -> None:
        self.ballast = bytearray(48 << 20)
        for i in range(0, len(self.ballast), 4096):  # touch every page: resident, not reserved
            self.ballast[i] = 1


class InlineBrokenModel(BrokenLoadModel):
    name = "inline-broken"
    placement = "inline"


app = corral.Server([SumModel, InlineSumModel, GrowingModel, InlineBrokenModel])

small = corral.Server([SumModel, InlineSumModel])  # loads at once: for tests that restart workers
