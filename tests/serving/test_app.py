"""The model server over real HTTP: answers, every bad-input case, the key, micro-batching."""

from __future__ import annotations

import asyncio
import logging

import httpx
import numpy as np
import pytest

from infra.settings import Settings
from serving.api.deps import API_KEY_HEADER
from serving.api.routes.classify import CLASSIFY_PATH
from tests.helpers.images import solid_png, truncated_png
from tests.helpers.models import CLASSES
from tests.helpers.serving import key_header, model_server, post_batch, post_image


def test_one_image_is_answered_by_the_champion(champion_settings: Settings) -> None:
    with model_server(champion_settings, inference_table=False) as client:
        response = post_image(client, solid_png(200))
        model = client.get("/v1/model")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in CLASSES
    assert set(body["probabilities"]) == set(CLASSES)
    assert np.isclose(sum(body["probabilities"].values()), 1.0, atol=1e-4)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()), abs=1e-5)
    assert body["model_name"] == champion_settings.model_name and body["model_version"] == "1"
    assert response.headers["x-request-id"] == body["request_id"]
    assert model.json() == {
        "model_name": champion_settings.model_name,
        "model_version": "1",
        "class_names": CLASSES,
        "image_size": 16,
    }


def test_a_batch_answers_each_image_and_names_the_bad_ones(champion_settings: Settings) -> None:
    parts = [
        ("good-1.png", solid_png(10), "image/png"),
        ("broken.png", truncated_png(), "image/png"),
        ("notes.txt", b"hello", "text/plain"),
        ("empty.png", b"", "image/png"),
        ("good-2.png", solid_png(250), "application/octet-stream"),
    ]
    with model_server(champion_settings, inference_table=False) as client:
        response = post_batch(client, parts, params={"embedding": "true"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [p[0] for p in parts]
    good = [results[0], results[4]]
    assert all(r["label"] in CLASSES and r["model_version"] == "1" and "error" not in r for r in good)
    assert all("embedding" in r for r in good)  # null until the model returns embeddings
    assert "truncated" in results[1]["error"] or "decode" in results[1]["error"].lower()
    assert "not an image" in results[2]["error"]
    assert results[3]["error"] == "empty image"


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"content-type": "text/plain"}, b"hello", 415, "not an image"),
        ({"content-type": ""}, b"\x89PNG", 415, "not an image"),
        ({"content-type": "image/png"}, b"", 422, "empty"),
        ({"content-type": "image/png"}, b"not a png at all", 422, ""),
        ({"content-type": "multipart/form-data"}, b"--x\r\n", 400, "boundary"),
        ({"content-type": "multipart/form-data; boundary=zz"}, b"no parts here", 400, ""),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(
    champion_settings: Settings, headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    with model_server(champion_settings, inference_table=False) as client:
        response = client.post(CLASSIFY_PATH, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]


def test_over_size_images_and_batches_are_refused(champion_settings: Settings) -> None:
    settings = champion_settings.model_copy(update={"max_image_bytes": 2000, "max_batch_images": 3})
    big = bytes(3000)
    with model_server(settings, inference_table=False) as client:
        declared = post_image(client, big)

        def chunks():  # no Content-Length: the cap holds while the body streams in
            yield big[:1000]
            yield big[1000:]

        streamed = client.post(CLASSIFY_PATH, content=chunks(), headers={"content-type": "image/png"})
        too_many = post_batch(client, [(f"{i}.png", solid_png(i), "image/png") for i in range(4)])
        big_part = post_batch(client, [("small.png", solid_png(5), "image/png"), ("big.png", big, "image/png")])
    assert declared.status_code == 413 and "over the limit of 2000" in declared.json()["error"]
    assert streamed.status_code == 413
    assert too_many.status_code == 413 and "more than 3 images" in too_many.json()["error"]
    assert big_part.status_code == 200
    assert [("error" in r) for r in big_part.json()["results"]] == [False, True]


def test_the_key_is_required_and_never_logged(champion_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    key = champion_settings.model_api_key.get_secret_value()
    with caplog.at_level(logging.DEBUG), model_server(champion_settings, inference_table=False) as client:
        missing = client.post(
            CLASSIFY_PATH, content=solid_png(), headers={"content-type": "image/png", API_KEY_HEADER: ""}
        )
        wrong = client.post(
            CLASSIFY_PATH, content=solid_png(), headers={"content-type": "image/png", API_KEY_HEADER: key + "x"}
        )
        model = client.get("/v1/model", headers={API_KEY_HEADER: key[:-1]})
        health = client.get("/healthz", headers={API_KEY_HEADER: ""})
        stats = client.get("/v1/stats").json()
    assert missing.status_code == wrong.status_code == model.status_code == 401
    assert health.status_code == 200
    assert stats["statuses"]["401"] == 3
    assert key not in caplog.text


def test_wrong_key_requests_stay_out_of_the_latency_figures(champion_settings: Settings) -> None:
    """A flood of 401s is counted, but p50/p99 remain those of the requests the model answered."""
    with model_server(champion_settings, inference_table=False) as client:
        assert post_image(client, solid_png()).status_code == 200
        before = client.get("/v1/stats").json()
        for _ in range(50):
            refused = client.post(CLASSIFY_PATH, content=solid_png(), headers={API_KEY_HEADER: "wrong"})
            assert refused.status_code == 401
        after = client.get("/v1/stats").json()
    assert after["statuses"]["401"] == 50
    assert before["p50_ms"] > 0 and (after["p50_ms"], after["p99_ms"]) == (before["p50_ms"], before["p99_ms"])


def test_no_champion_is_a_503_that_says_so(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path / "empty")
    with model_server(settings, inference_table=False) as client:
        response = post_image(client, solid_png())
        model = client.get("/v1/model")
    assert response.status_code == model.status_code == 503
    assert "has no 'champion' version yet" in response.json()["error"]


def test_concurrent_requests_share_model_calls(champion_settings: Settings) -> None:
    requests = 48
    with model_server(champion_settings, inference_table=False) as client:
        base = str(client.base_url)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=base, headers=key_header(champion_settings), timeout=60) as pool:
                sent = [
                    pool.post(CLASSIFY_PATH, content=solid_png(i), headers={"content-type": "image/png"})
                    for i in range(requests)
                ]
                return [r.status_code for r in await asyncio.gather(*sent)]

        statuses = asyncio.run(burst())
        stats = client.get("/v1/stats").json()
    assert statuses == [200] * requests
    assert stats["images"] == requests
    assert stats["model_batches"] < requests  # several requests per model call
    assert stats["model_batch_images_mean"] > 1


def test_a_deployment_can_serve_another_alias(champion_settings: Settings) -> None:
    from infra.registry import set_alias
    from tests.helpers.models import IMAGE_SIZE
    from training.bench.toy_models import register_champion, tiny_cnn

    newer = register_champion(
        champion_settings, tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=5), class_names=CLASSES, image_size=IMAGE_SIZE
    )
    set_alias(champion_settings, "challenger", "1")
    green = champion_settings.model_copy(update={"serve_alias": "challenger"})
    with model_server(green, inference_table=False) as client:
        served = post_image(client, solid_png(3)).json()["model_version"]
    with model_server(champion_settings, inference_table=False) as client:
        champion = post_image(client, solid_png(3)).json()["model_version"]
    assert (newer, served, champion) == ("2", "1", "2")
    missing = champion_settings.model_copy(update={"serve_alias": "nobody"})
    with model_server(missing, inference_table=False) as client:
        refused = post_image(client, solid_png(3))
    assert refused.status_code == 503 and "no 'nobody' version" in refused.json()["error"]


def test_a_failed_model_call_answers_503_and_the_next_request_is_served(champion_settings: Settings) -> None:
    from serving.batcher import served_classifier

    calls = {"n": 0}

    def flaky(settings: Settings):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("artifact store unreachable")
        return served_classifier(settings)

    with model_server(champion_settings, champion=flaky, inference_table=False) as client:
        first = post_image(client, solid_png(1))
        second = post_image(client, solid_png(2))
    assert first.status_code == 503 and "artifact store unreachable" in first.json()["error"]
    assert second.status_code == 200 and second.json()["model_version"] == "1"


def test_only_unsure_rows_carry_bytes_for_labeling() -> None:
    from serving.api.routes.classify import _attach_for_labeling
    from serving.batcher import Scored
    from serving.inference_log import CLASS_NAMES, CONTENT, PROBABILITIES
    from serving.uploads import Upload

    items = [Upload("sure", b"a"), Upload("refused", None, "empty image"), Upload("unsure", b"c")]
    scored = Scored(
        rows=[
            {"label": "x", "confidence": 0.99, "probabilities": [0.99, 0.01], "error": None},
            {"label": "y", "confidence": 0.6, "probabilities": [0.4, 0.6], "error": None},
        ],
        class_names=["x", "y"],
        model_version="1",
    )
    rows: list[dict[str, object]] = [{}, {}, {}]
    _attach_for_labeling(rows, items, scored, threshold=0.9)
    assert CONTENT not in rows[0] and CONTENT not in rows[1]
    assert rows[2][CONTENT] == b"c" and rows[2][PROBABILITIES] == [0.4, 0.6] and rows[2][CLASS_NAMES] == ["x", "y"]
