"""A one-model app whose answer is in its source, for the --reload test (GREETING is
replaced by the test)."""

import corral
from tests.fixtures import Upper, Word


class GreeterModel(corral.Model):
    def predict(self, batch: list[Word]) -> list[Upper]:
        return [Upper(upper="GREETING") for _ in batch]
