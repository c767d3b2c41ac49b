"""An app for end-to-end tests: the fixture models, served together."""

import corral
from tests.fixtures import (
    BrokenLoadModel,
    EchoV1Model,
    EchoV2Model,
    EchoV10Model,
    SlowLoadModel,
    SumItemsModel,
    SumModel,
)

app = corral.Server([SumModel, SumItemsModel, EchoV1Model, EchoV2Model, EchoV10Model,
                     BrokenLoadModel, SlowLoadModel])
