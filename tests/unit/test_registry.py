"""Model declarations: names, types, versions, overrides, and start-up refusals."""

from __future__ import annotations

import pytest
from pydantic import RootModel

import corral
from corral.config import Settings
from corral.errors import ModelNotFound, StartupError, VersionNotFound
from corral.registry.catalog import Catalog, version_order
from corral.registry.spec import build_spec, kebab_name
from tests.fixtures import EchoV1Model, EchoV2Model, EchoV10Model, SumModel, Word, Upper


@pytest.mark.parametrize("cls_name, expected", [
    ("SentimentModel", "sentiment"),
    ("IrisClassifier", "iris-classifier"),
    ("HTTPLogModel", "http-log"),
    ("TextStatsModel", "text-stats"),
    ("Model2Vec", "model2-vec"),
    ("Bert", "bert"),
])
def test_kebab_name(cls_name: str, expected: str) -> None:
    assert kebab_name(cls_name) == expected


def test_spec_reads_types_and_batching() -> None:
    spec = build_spec(SumModel, Settings())
    assert spec.key.name == "sum" and spec.key.version == "1"
    assert spec.input_type.__name__ == "Numbers" and spec.output_type.__name__ == "Total"
    assert spec.batching.max_size == 8 and spec.batching.max_queue == 64


def test_model_without_batching_gets_batches_of_one() -> None:
    assert build_spec(EchoV1Model, Settings()).batching.max_size == 1


def test_settings_override_class_attributes() -> None:
    settings = Settings(models={"sum": {"max_size": 3, "timeout": 2.5, "replicas": 2}})
    spec = build_spec(SumModel, settings)
    assert (spec.batching.max_size, spec.batching.timeout, spec.replicas) == (3, 2.5, 2)
    assert spec.batching.max_queue == 64  # not overridden


def test_env_overrides_use_underscores_for_dashes(monkeypatch: pytest.MonkeyPatch) -> None:
    class TextStatsModel(corral.Model):
        def predict(self, batch: list[Word]) -> list[Upper]:
            return []

    monkeypatch.setenv("CORRAL_MODELS__TEXT_STATS__MAX_SIZE", "7")
    assert build_spec(TextStatsModel, Settings()).batching.max_size == 7


def test_scalar_input_is_refused_with_a_fix() -> None:
    class BadModel(corral.Model):
        def predict(self, batch: list[str]) -> list[Upper]:
            return []

    with pytest.raises(StartupError, match="Wrap the value in a field"):
        build_spec(BadModel, Settings())


class Items(RootModel[list[int]]):
    pass


def test_root_model_input_is_refused() -> None:
    class BadModel(corral.Model):
        def predict(self, batch: list[Items]) -> list[Upper]:
            return []

    with pytest.raises(StartupError, match="pydantic model with fields"):
        build_spec(BadModel, Settings())


def test_missing_annotations_are_refused() -> None:
    class BadModel(corral.Model):
        def predict(self, batch):  # type: ignore[no-untyped-def]
            return []

    with pytest.raises(StartupError, match="needs a type"):
        build_spec(BadModel, Settings())


def test_non_list_batch_is_refused() -> None:
    class BadModel(corral.Model):
        def predict(self, batch: Word) -> list[Upper]:  # type: ignore[override]
            return []

    with pytest.raises(StartupError, match="must be a list of one pydantic model"):
        build_spec(BadModel, Settings())


def test_model_without_predict_is_refused() -> None:
    class Empty(corral.Model):
        pass

    with pytest.raises(StartupError, match="must implement predict"):
        build_spec(Empty, Settings())


def test_bad_name_is_refused() -> None:
    class Named(corral.Model):
        name = "Has Spaces"

        def predict(self, batch: list[Word]) -> list[Upper]:
            return []

    with pytest.raises(StartupError, match="not usable in a URL"):
        build_spec(Named, Settings())


def catalog(*classes: type[corral.Model]) -> Catalog:
    return Catalog(build_spec(c, Settings()) for c in classes)


def test_marked_default_beats_highest_version() -> None:
    c = catalog(EchoV1Model, EchoV2Model, EchoV10Model)
    assert c.default_version("echo") == "2"
    assert c.resolve("echo").version == "2"
    assert c.resolve("echo", "10").version == "10"
    assert [s.version for s in c.versions("echo")] == ["1", "2", "10"]


def test_highest_version_is_numeric_when_numbers() -> None:
    class V9(corral.Model):
        name, version = "m", "9"

        def predict(self, batch: list[Word]) -> list[Upper]:
            return []

    class V10(V9):
        version = "10"

    assert catalog(V9, V10).default_version("m") == "10"


def test_version_order_puts_numbers_above_strings() -> None:
    assert sorted(["b", "10", "a", "9"], key=version_order) == ["a", "b", "9", "10"]
    assert sorted(["1.10", "1.9", "2", "nan", "1e3"], key=version_order) == [
        "1e3", "nan", "1.9", "1.10", "2"]


def test_duplicate_name_and_version_is_refused() -> None:
    class Again(corral.Model):
        name, version = "echo", "1"

        def predict(self, batch: list[Word]) -> list[Upper]:
            return []

    with pytest.raises(StartupError, match="Two models are named 'echo' with version '1'"):
        catalog(EchoV1Model, Again)


def test_two_defaults_are_refused() -> None:
    class AlsoDefault(corral.Model):
        name, version, default = "echo", "3", True

        def predict(self, batch: list[Word]) -> list[Upper]:
            return []

    with pytest.raises(StartupError, match="several versions as default"):
        catalog(EchoV2Model, AlsoDefault)


def test_unknown_names_list_what_exists() -> None:
    c = catalog(EchoV1Model, EchoV2Model, SumModel)
    with pytest.raises(ModelNotFound, match="known models: echo, sum"):
        c.resolve("nope")
    with pytest.raises(VersionNotFound, match="known: 1, 2"):
        c.resolve("echo", "7")


def test_empty_server_is_refused() -> None:
    with pytest.raises(StartupError, match="No models"):
        Catalog([])


def test_server_refuses_instances() -> None:
    with pytest.raises(StartupError, match="Pass the class"):
        corral.Server([SumModel()])  # type: ignore[list-item]


def test_devices_from_class_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.dispatch.devices import device_env, model_device
    from tests.fixtures import DeviceModel

    spec = build_spec(DeviceModel, Settings())
    assert [spec.device_for(i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.setenv("CORRAL_MODELS__DEVICE__DEVICES", '["cpu"]')
    assert build_spec(DeviceModel, Settings()).device_for(1) == "cpu"
    assert build_spec(SumModel, Settings()).device_for(0) is None
    assert device_env("cuda:3") == {"CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
    assert device_env("cpu") == {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    assert device_env(None) == {} and model_device(None) == "cpu"
    assert model_device("2") == "cuda"
    with pytest.raises(StartupError, match="not one of"):
        build_spec(DeviceModel, Settings(models={"device": {"devices": ["tpu"]}}))


def test_placement_from_class_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    class InlineSum(SumModel):
        name = "inline-sum"
        placement = "inline"

    assert build_spec(SumModel, Settings()).placement == "process"
    assert build_spec(InlineSum, Settings()).inline
    monkeypatch.setenv("CORRAL_MODELS__INLINE_SUM__PLACEMENT", "process")
    assert build_spec(InlineSum, Settings()).placement == "process"
    monkeypatch.setenv("CORRAL_MODELS__INLINE_SUM__PLACEMENT", "inlined")
    with pytest.raises(ValueError, match="inline"):
        Settings()


def test_bad_placements_are_refused_with_the_choices() -> None:
    class Elsewhere(SumModel):
        placement = "remote"

    with pytest.raises(StartupError, match='"process".*"inline".*not \'remote\''):
        build_spec(Elsewhere, Settings())

    class InlineGpu(SumModel):
        placement = "inline"
        devices = ["cuda:0"]

    with pytest.raises(StartupError, match="cannot each own a GPU"):
        build_spec(InlineGpu, Settings())


def test_input_size_must_be_callable_with_one_input() -> None:
    from tests.fixtures import SizedModel

    assert build_spec(SizedModel, Settings()).size_of is not None
    assert build_spec(SumModel, Settings()).size_of is None

    class MethodNotStatic(SizedModel):
        name = "method"

        def input_size(self, item):  # type: ignore[no-untyped-def,override]
            return 1.0

    with pytest.raises(StartupError, match="@staticmethod"):
        build_spec(MethodNotStatic, Settings())


def test_inline_models_cannot_recycle_replicas() -> None:
    class Leaky(SumModel):
        placement = "inline"
        max_requests = 100

    with pytest.raises(StartupError, match="--max-requests"):
        build_spec(Leaky, Settings())


def test_input_sizes_of_any_real_number_and_the_input_s_own_errors() -> None:
    import numpy as np

    from corral.errors import InvalidInput, ModelError
    from tests.fixtures import Sentence, SizedModel

    class Sizes(SizedModel):
        @staticmethod
        def input_size(item: Sentence) -> float:
            if item.text == "refuse":
                raise InvalidInput("too long to size")
            if item.text == "nan":
                return float("nan")
            return {"zero": 0, "numpy": np.float32(3.5)}.get(item.text, 7)  # type: ignore[return-value]

    spec = build_spec(Sizes, Settings())
    assert spec.input_size([Sentence(text="numpy"), Sentence(text="x")]) == 7.0
    assert spec.input_size([Sentence(text="numpy")]) == 3.5
    assert 0 < spec.input_size([Sentence(text="zero")]) < 1e-3
    with pytest.raises(InvalidInput, match="too long"):
        spec.input_size([Sentence(text="refuse")])
    with pytest.raises(ModelError):
        spec.input_size([Sentence(text="nan")])
