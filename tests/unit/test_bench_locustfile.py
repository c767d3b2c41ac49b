"""Load-test bodies from input schemas (corral.bench.payloads) and the locustfile built
from them (corral.bench.locustfile): bodies checked against the pydantic models whose
schemas they came from; the generated source parsed, never run (Locust is not imported
here: its gevent patching has no place in the test process)."""

from __future__ import annotations

import ast
import json
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# corral.bench is imported inside each test, not here: its errors subclass StartupError,
# and tests/unit/test_errors.py lists every CorralError subclass when it is collected,
# expecting each to round-trip with its own problem type.


def _target(name: str, schema: dict[str, Any]) -> Any:
    from corral.bench.target import ModelTarget

    return ModelTarget(name, "1", schema, max_size=8, max_queue=64, timeout=10.0)


def _valid(model: type[BaseModel], count: int = 8) -> list[bytes]:
    """The bodies built from ``model``'s schema, each checked against ``model``."""
    from corral.bench.payloads import valid_bodies

    bodies = valid_bodies(model.model_json_schema(), count)
    assert bodies
    for body in bodies:
        model.model_validate_json(body)
    return bodies


# -- valid_bodies ---------------------------------------------------------------------


class Flower(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sepal_length: float = Field(gt=0, le=20, examples=[5.1, 6.3, 7.7])
    petal_length: float = Field(gt=0, le=20, examples=[1.4, 4.9])
    note: str = Field("", max_length=20)


def test_examples_make_one_variant_each_cycling_the_shorter_lists() -> None:
    bodies = _valid(Flower)
    assert [json.loads(b) for b in bodies] == [
        {"sepal_length": 5.1, "petal_length": 1.4, "note": ""},
        {"sepal_length": 6.3, "petal_length": 4.9, "note": ""},
        {"sepal_length": 7.7, "petal_length": 1.4, "note": ""},
    ]
    assert _valid(Flower, count=2) == bodies[:2]


class Constrained(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=3, le=9)
    positive: int = Field(gt=0)
    negative: float = Field(lt=0)
    tiny: float = Field(gt=0, lt=1e-6)
    below: int = Field(le=-3)
    exact: int = Field(ge=4, le=4)
    word: str = Field(min_length=30, max_length=40)
    short: str = Field(max_length=3)
    flag: bool
    anything: int | str
    maybe: float | None
    scores: list[float] = Field(min_length=3, max_length=5)
    mapping: dict[str, int]


def test_constraints_are_met_without_examples() -> None:
    (body,) = _valid(Constrained)
    value = json.loads(body)
    assert 3 <= value["count"] <= 9 and len(value["scores"]) >= 3


class Color(str, Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, le=100)
    y: float
    label: str = "p"


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    color: Color
    level: Level
    mode: Literal["fast", "exact"]
    kind: Literal["shape"]
    origin: Point
    points: list[Point] = Field(min_length=2)
    nested: list[list[int]]
    parent: Point | None = None


def test_refs_to_nested_models_enums_and_arrays() -> None:
    schema = Shape.model_json_schema()
    assert "$defs" in schema  # the case under test: fields that are $refs
    (body,) = _valid(Shape)
    value = json.loads(body)
    assert value["color"] == "red" and value["mode"] == "fast" and value["kind"] == "shape"
    assert len(value["points"]) == 2 and value["nested"] == [[1]]


class Enumerated(BaseModel):
    color: Color = Field(examples=["red", "green"])
    mode: Literal["a", "b", "c"]


def test_enums_vary_with_the_examples() -> None:
    values = [json.loads(b) for b in _valid(Enumerated)]
    assert [v["color"] for v in values] == ["red", "green"]
    assert [v["mode"] for v in values] == ["a", "b"]


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


def test_a_recursive_model_stops() -> None:
    assert [json.loads(b) for b in _valid(Tree)] == [{"name": "s", "children": []}]


class Identified(BaseModel):
    code: str = Field(pattern=r"^[A-Z]{3}-\d{4}$")
    other: str = Field("x", pattern=r"^x$")


class OptionalCode(BaseModel):
    code: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    name: str


def test_a_required_pattern_cannot_be_made_up() -> None:
    from corral.bench.payloads import PayloadError, valid_bodies

    with pytest.raises(PayloadError, match="code") as caught:
        valid_bodies(Identified.model_json_schema())
    assert "JSONL" in str(caught.value) and "other" not in str(caught.value)
    assert _valid(OptionalCode)  # an optional one is left out (here: its default)


def test_a_required_pattern_is_met_by_its_example() -> None:
    class WithExample(BaseModel):
        code: str = Field(pattern=r"^[A-Z]{3}-\d{4}$", examples=["ABC-1234"])

    assert _valid(WithExample) == [b'{"code":"ABC-1234"}']


# -- invalid_body ---------------------------------------------------------------------


def test_the_invalid_body_is_refused_by_the_model() -> None:
    from corral.bench.payloads import invalid_body

    for model in (Flower, Constrained, Shape, Identified):
        body = invalid_body(model.model_json_schema())
        assert body == b"{}"
        with pytest.raises(ValidationError):
            model.model_validate_json(body)


def test_the_invalid_body_without_required_fields_is_an_empty_array() -> None:
    from corral.bench.payloads import invalid_body

    class AllDefaults(BaseModel):
        n: int = 1

    # Any object passes such a model; the server refuses an empty array (no input).
    assert invalid_body(AllDefaults.model_json_schema()) == b"[]"


# -- read_jsonl -----------------------------------------------------------------------


def test_read_jsonl_keeps_objects_and_arrays_compact(tmp_path: Path) -> None:
    from corral.bench.payloads import read_jsonl

    path = tmp_path / "inputs.jsonl"
    path.write_text('{"text": "caf\u00e9 \\"quoted\\""}\n\n  \n[{"text": "a"}, {"text": "b"}]\n',
                    encoding="utf-8")
    bodies = read_jsonl(path)
    assert [json.loads(b) for b in bodies] == [{"text": 'caf\u00e9 "quoted"'},
                                               [{"text": "a"}, {"text": "b"}]]
    assert bodies[1] == b'[{"text":"a"},{"text":"b"}]'


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": 1}\n{"a": \n', "line 2 is not JSON"),
    ('{"a": 1}\n\n"text"\n', "line 3 is not an input"),
    ("42\n", "line 1 is not an input"),
    ("\n \n", "holds no inputs"),
])
def test_read_jsonl_names_the_bad_line(tmp_path: Path, content: str, message: str) -> None:
    from corral.bench.payloads import PayloadError, read_jsonl

    path = tmp_path / "inputs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PayloadError, match=message):
        read_jsonl(path)


def test_read_jsonl_of_an_unreadable_file(tmp_path: Path) -> None:
    from corral.bench.payloads import PayloadError, read_jsonl

    with pytest.raises(PayloadError, match="Cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"a": "\xe9"}\n')
    with pytest.raises(PayloadError, match="Cannot read"):
        read_jsonl(tmp_path / "latin1.jsonl")


# -- locustfile_text ------------------------------------------------------------------


def _parse(source: str) -> tuple[dict[str, Any], ast.ClassDef]:
    """The generated file compiled, its MODELS table read back, and its user class."""
    compile(source, "locustfile.py", "exec")
    tree = ast.parse(source)
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "MODELS" for t in node.targets))
    user = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    return ast.literal_eval(table), user


def _tasks(user: ast.ClassDef) -> dict[str, int]:
    """Task method name -> weight, from the ``@task(N)`` decorators."""
    out = {}
    for node in user.body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "task":
                    out[node.name] = ast.literal_eval(deco.args[0])
    return out


def test_one_weighted_task_per_model_and_one_for_jobs() -> None:
    from corral.bench.locustfile import locustfile_text

    models = [_target("iris", Flower.model_json_schema()),
              _target("shape", Shape.model_json_schema())]
    source = locustfile_text(models, "http://127.0.0.1:8000/", invalid_share=0.25)
    table, user = _parse(source)
    assert _tasks(user) == {"predict_iris": 10, "predict_shape": 10, "job": 1}
    assert table["iris"]["predict"] == "/v1/models/iris/predict"
    assert table["iris"]["jobs"] == "/v1/models/iris/jobs"
    assert table["iris"]["valid"] == _valid(Flower) and table["iris"]["invalid"] == b"{}"
    assert "host = 'http://127.0.0.1:8000'\n" in source
    assert "INVALID_SHARE = 0.25\n" in source
    assert "generated by `corral locustfile`" in source
    assert "--headless -u 16 -r 16 -t 30s" in source
    assert "corral" not in "\n".join(line for line in source.splitlines()
                                     if line.lstrip().startswith(("import", "from")))


def test_no_jobs_task_when_asked() -> None:
    from corral.bench.locustfile import locustfile_text

    source = locustfile_text([_target("iris", Flower.model_json_schema())], "http://h",
                             jobs=False, invalid_share=0)
    _, user = _parse(source)
    assert _tasks(user) == {"predict_iris": 10}
    assert "/v1/jobs/" not in source and "INVALID_SHARE = 0.0\n" in source


HOSTILE_BODIES = [
    b'{"text":"it\'s \\"quoted\\" \\\\ back\\\\slash"}',
    '{"text":"caf\u00e9 \u2028 \U0001f600 \u202e"}'.encode(),
    b'{"text":"\'\'\' and \\"\\"\\" and {braces} and $dollar and \\n newline"}',
    b'[{"a":null},{"b":[1.5e300,-0,true]}]',
    b'{"text":"\\u0000\\ud800"}',
]


def test_hostile_names_bodies_and_host_still_compile() -> None:
    from corral.bench.locustfile import locustfile_text

    names = ["a'b", 'a"b', "x'''y", 'x"""y', "a\\b", "new\nline", "caf\u00e9", "a-b",
             "a.b", "9lives", "with space", "{braces}", "$dollar", "a/b?c#d"]
    schema = {"type": "object", "properties": {"text": {"type": "string"}},
              "required": ["text"]}
    models = [_target(name, schema) for name in names]
    source = locustfile_text(models, 'http://h/"""\\\n$x', bodies={n: HOSTILE_BODIES
                                                                   for n in names})
    table, user = _parse(source)
    assert list(table) == names
    assert all(table[n]["valid"] == HOSTILE_BODIES for n in names)
    tasks = _tasks(user)
    assert len(tasks) == len(names) + 1 and all(name.isidentifier() for name in tasks)
    # the path is URL-quoted: one segment, whatever the name holds
    assert table["a/b?c#d"]["predict"] == "/v1/models/a%2Fb%3Fc%23d/predict"


def test_given_bodies_replace_the_schemas() -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.payloads import PayloadError

    models = [_target("ids", Identified.model_json_schema()),
              _target("iris", Flower.model_json_schema())]
    with pytest.raises(PayloadError, match="code"):
        locustfile_text(models, "http://h")
    real = [b'{"code":"ABC-1234"}', b'[{"code":"XYZ-0000"}]']
    table, _ = _parse(locustfile_text(models, "http://h", bodies={"ids": real}))
    assert table["ids"]["valid"] == real and table["ids"]["invalid"] == b"{}"
    assert table["iris"]["valid"] == _valid(Flower)


def test_nothing_to_test_or_a_bad_share_is_refused() -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.target import TargetError

    with pytest.raises(TargetError, match="no models"):
        locustfile_text([], "http://h")
    with pytest.raises(ValueError, match="between 0 and 1"):
        locustfile_text([_target("iris", Flower.model_json_schema())], "http://h",
                        invalid_share=1.5)
