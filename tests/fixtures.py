"""Small named test models, used by unit and end-to-end tests alike."""

from __future__ import annotations

import logging
import os
import threading
import time

from pydantic import BaseModel, ConfigDict, Field, computed_field

import corral
from corral.errors import InvalidInput


class FakeClock:
    """A clock the test moves by hand, for the pure batching and dispatch code."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Numbers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[float] = Field(min_length=1, max_length=100, examples=[[1, 2, 3]])
    delay: float = Field(0.0, ge=0, le=10, description="Seconds to sleep in predict.")
    poison: bool = Field(False, description="Make predict raise for the whole batch.")
    reject: bool = Field(False, description="Make predict raise InvalidInput.")
    spin: float = Field(0.0, ge=0, le=10, description="Seconds to busy-loop in predict.")
    die: bool = Field(False, description="Make the replica process exit in predict (as a "
                      "segfault or an OOM kill would); for process trees only.")


class Total(BaseModel):
    total: float
    batch_size: int
    pid: int


class SumModel(corral.Model):
    """Adds numbers; records batch sizes, and raises on poison inputs."""

    batching = corral.Batching(max_size=8, max_wait_ms=20, max_queue=64, timeout=10)
    batch_sizes: list[int] = []
    seen: list[list[float]] = []

    def predict(self, batch: list[Numbers]) -> list[Total]:
        logging.getLogger("tests.sum").info("sum model computing %d inputs", len(batch))
        type(self).batch_sizes.append(len(batch))
        type(self).seen.extend(x.values for x in batch)
        record = os.environ.get("SUM_RECORD_FILE")
        if record:  # lets a test in another process see what was computed
            with open(record, "a") as f:
                f.writelines(f"{x.values}\n" for x in batch)
        time.sleep(max(x.delay for x in batch))
        spin_until = time.monotonic() + max(x.spin for x in batch)
        while time.monotonic() < spin_until:  # CPU-bound, never yields to an event loop
            pass
        if any(x.die for x in batch):
            os._exit(1)
        if any(x.poison for x in batch):
            raise RuntimeError("secret internal detail: poisoned")
        if any(x.reject for x in batch):
            raise InvalidInput("This input is rejected by the model: reject=true.")
        return [Total(total=sum(x.values), batch_size=len(batch), pid=os.getpid()) for x in batch]


class SumItemsModel(SumModel):
    """SumModel that answers an array with per-item errors."""

    name = "sum-items"
    per_item_errors = True


class Word(BaseModel):
    word: str = Field(min_length=1, max_length=50, examples=["corral"])


class Upper(BaseModel):
    upper: str


class EchoV1Model(corral.Model):
    """First version: upper-cases."""

    name = "echo"
    version = "1"

    def predict(self, batch: list[Word]) -> list[Upper]:
        return [Upper(upper=w.word.upper()) for w in batch]


class EchoV2Model(corral.Model):
    """Second version: upper-cases and reverses; the default."""

    name = "echo"
    version = "2"
    default = True

    def predict(self, batch: list[Word]) -> list[Upper]:
        return [Upper(upper=w.word.upper()[::-1]) for w in batch]


class EchoV10Model(corral.Model):
    """Version 10: highest, but not the default since v2 is marked."""

    name = "echo"
    version = "10"

    def predict(self, batch: list[Word]) -> list[Upper]:
        return [{"upper": w.word} for w in batch]  # type: ignore[misc]


class BrokenLoadModel(corral.Model):
    """load() always raises."""

    attempts = 0  # in-process: how many times load() ran

    def load(self) -> None:
        type(self).attempts += 1
        raise OSError("weights file missing: /secret/path")

    def predict(self, batch: list[Word]) -> list[Upper]:
        raise AssertionError("never called")


class SlowLoadModel(corral.Model):
    """load() takes a while: until released (in-process), until the file SLOW_LOAD_GATE
    exists (at most 60 s), or SLOW_LOAD_SECONDS."""

    release = threading.Event()

    def load(self) -> None:
        gate = os.environ.get("SLOW_LOAD_GATE")
        if gate:
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        self.release.wait(float(os.environ.get("SLOW_LOAD_SECONDS", "3")))

    def predict(self, batch: list[Word]) -> list[Upper]:
        return [Upper(upper=w.word) for w in batch]


class BadOutputModel(corral.Model):
    """Returns the wrong number of outputs."""

    def predict(self, batch: list[Word]) -> list[Upper]:
        return []


class Placement(BaseModel):
    pid: int
    cuda_visible_devices: str | None
    hip_visible_devices: str | None
    device: str


class DeviceModel(corral.Model):
    """Reports the devices its replica process was placed on."""

    replicas = 2
    devices = ["cuda:0", "cuda:1"]

    def predict(self, batch: list[Word]) -> list[Placement]:
        return [Placement(pid=os.getpid(),
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          hip_visible_devices=os.environ.get("HIP_VISIBLE_DEVICES"),
                          device=self.device) for _ in batch]


class CpuDeviceModel(DeviceModel):
    """The same, told to stay on the CPU."""

    name = "cpu-device"
    replicas = 1
    devices = ["cpu"]


class Span(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    start: int = Field(alias="from", ge=0)
    end: int = Field(alias="to", ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def length(self) -> int:
        return self.end - self.start


class Length(BaseModel):
    length: int


class SpanModel(corral.Model):
    """Input fields with aliases and a computed field."""

    def predict(self, batch: list[Span]) -> list[Length]:
        return [Length(length=s.length) for s in batch]


class Sentence(BaseModel):
    text: str = Field(min_length=1, max_length=1000, examples=["a short one"])
    delay: float = Field(0.0, ge=0, le=5)


class Count(BaseModel):
    words: int


class SizedModel(corral.Model):
    """Counts words; sizes each input by its words, and records each batch's sizes."""

    batching = corral.Batching(max_size=8, max_wait_ms=20, timeout=10)
    batches: list[list[int]] = []

    @staticmethod
    def input_size(item: Sentence) -> float:
        if item.text == "unsizable":
            raise ValueError("secret internal detail: cannot size")
        return len(item.text.split())

    def predict(self, batch: list[Sentence]) -> list[Count]:
        type(self).batches.append([len(x.text.split()) for x in batch])
        time.sleep(max(x.delay for x in batch))
        return [Count(words=len(x.text.split())) for x in batch]
