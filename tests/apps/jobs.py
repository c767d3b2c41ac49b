"""An app for the jobs tests: the sum models (slow, failing, per-item errors on demand)."""

import corral
from tests.fixtures import SumItemsModel, SumModel

app = corral.Server([SumModel, SumItemsModel])
