"""``bench serve``'s load generator against a real server: whole responses read, failures counted."""

from __future__ import annotations

from infra.settings import Settings
from serving.bench import run_cases
from tests.helpers.images import solid_png
from tests.helpers.serving import model_server


def test_each_case_is_one_row_of_answered_requests(champion_settings: Settings) -> None:
    images = [solid_png(v) for v in (10, 90, 170)]
    key = champion_settings.model_api_key.get_secret_value()
    with model_server(champion_settings, inference_table=False) as client:
        rows = run_cases(str(client.base_url), key, images, cases=((2, 1), (2, 3)), seconds=1.0)
        refused = run_cases(str(client.base_url), "wrong", images, cases=((1, 1),), seconds=0.5)
        stats = client.get("/v1/stats").json()
    assert [(r["concurrency"], r["images_per_request"]) for r in rows] == [(2, 1), (2, 3)]
    for row in rows:
        assert row["failed"] == 0 and row["requests"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert (
            row["images_per_s"] == round(row["requests_per_s"] * row["images_per_request"], 1)
            or row["images_per_s"] > 0
        )
    assert refused[0]["failed"] == refused[0]["requests"] > 0  # 401s are counted, not taken for answers
    assert stats["statuses"]["200"] >= sum(r["requests"] for r in rows)
