"""The app schemathesis fuzzes: fast, deterministic models only (no sleeps, no failures)."""

import corral
from examples.quickstart import IrisModel, TextStatsModel
from tests.fixtures import EchoV1Model, EchoV2Model, EchoV10Model

app = corral.Server([IrisModel, TextStatsModel, EchoV1Model, EchoV2Model, EchoV10Model])
