"""Models placed on devices, for tests/e2e/test_workers.py."""

import corral
from tests.fixtures import CpuDeviceModel, DeviceModel

app = corral.Server([DeviceModel, CpuDeviceModel])
