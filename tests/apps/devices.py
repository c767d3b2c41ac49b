"""Models for tests/e2e/test_workers.py: placed on devices, and one with aliased fields."""

import corral
from tests.fixtures import CpuDeviceModel, DeviceModel, SpanModel

app = corral.Server([DeviceModel, CpuDeviceModel, SpanModel])
