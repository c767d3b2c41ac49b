"""One fast model, for the WSGI servers' tests."""

import corral
from tests.fixtures import EchoV1Model, SumModel

app = corral.Server([EchoV1Model, SumModel])
