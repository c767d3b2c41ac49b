"""Quickstart: two models on one server.

    corral serve examples/quickstart.py
    curl -s localhost:8000/v1/models/iris/predict -H 'Content-Type: application/json' \
         -d '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

This file is imported by every HTTP worker for its types, so it stays light:
scikit-learn is imported inside load(), where the model is built.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import corral


class Flower(BaseModel):
    """Measurements of one iris flower, in centimetres."""

    model_config = ConfigDict(extra="forbid")

    sepal_length: float = Field(gt=0, le=20, examples=[5.1])
    sepal_width: float = Field(gt=0, le=20, examples=[3.5])
    petal_length: float = Field(gt=0, le=20, examples=[1.4])
    petal_width: float = Field(gt=0, le=20, examples=[0.2])


class Species(BaseModel):
    species: str = Field(description="setosa, versicolor or virginica")
    probability: float = Field(ge=0, le=1)


class IrisModel(corral.Model):
    """Iris species from flower measurements (logistic regression, trained at load time)."""

    version = "1"
    batching = corral.Batching(max_size=64, max_wait_ms=2)

    def load(self) -> None:
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        data = load_iris()
        self.names = list(data.target_names)
        self.clf = LogisticRegression(max_iter=500).fit(data.data, data.target)

    def predict(self, batch: list[Flower]) -> list[Species]:
        rows = [[f.sepal_length, f.sepal_width, f.petal_length, f.petal_width] for f in batch]
        results = []
        for probs in self.clf.predict_proba(rows):
            best = int(probs.argmax())
            results.append(Species(species=self.names[best], probability=round(float(probs[best]), 4)))
        return results


class Text(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=10_000, examples=["Corral serves models."])


class TextStats(BaseModel):
    characters: int
    words: int
    uppercase_ratio: float


class TextStatsModel(corral.Model):
    """Counts characters and words: a second, dependency-free model."""

    def predict(self, batch: list[Text]) -> list[TextStats]:
        out = []
        for item in batch:
            letters = [c for c in item.text if c.isalpha()]
            upper = sum(c.isupper() for c in letters)
            out.append(TextStats(
                characters=len(item.text),
                words=len(item.text.split()),
                uppercase_ratio=round(upper / len(letters), 4) if letters else 0.0,
            ))
        return out
