"""An app for the end-to-end test of length-aware batching through the process tree: each
answer says which sizes its batch held."""

from __future__ import annotations

import time

from pydantic import BaseModel

import corral
from tests.fixtures import Sentence


class Grouped(BaseModel):
    words: int
    batch: list[int]  # the word counts of every input of its batch, in order


class GroupedModel(corral.Model):
    batching = corral.Batching(max_size=8, max_wait_ms=20, timeout=10)

    @staticmethod
    def input_size(item: Sentence) -> float:
        return len(item.text.split())

    def predict(self, batch: list[Sentence]) -> list[Grouped]:
        time.sleep(max(x.delay for x in batch))
        sizes = [len(x.text.split()) for x in batch]
        return [Grouped(words=n, batch=sizes) for n in sizes]


app = corral.Server([GroupedModel])
