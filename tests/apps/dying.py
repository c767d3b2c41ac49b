"""An app with a model whose load() kills its own process (as an OOM kill would), beside
one that loads: only for `corral serve`, never in-process."""

import os
import signal

import corral
from tests.fixtures import EchoV1Model, Upper, Word


class DyingLoadModel(corral.Model):
    """load() dies without a word."""

    def load(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def predict(self, batch: list[Word]) -> list[Upper]:
        raise AssertionError("never called")


app = corral.Server([DyingLoadModel, EchoV1Model])
