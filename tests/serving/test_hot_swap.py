"""A promotion reaches the running model server under load: no failed request while the alias moves."""

from __future__ import annotations

import threading
import time

from infra.settings import Settings
from tests.helpers.images import solid_png
from tests.helpers.models import CLASSES, IMAGE_SIZE
from tests.helpers.serving import model_server, post_image
from training.bench.toy_models import register_champion, tiny_cnn


def test_promotion_under_load_fails_no_request(champion_settings: Settings) -> None:
    stop = threading.Event()
    seen: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]

    with model_server(champion_settings, inference_table=False) as client:

        def caller(index: int) -> None:
            while not stop.is_set():
                response = post_image(client, solid_png(40 * index))
                seen[index].append((response.status_code, response.json().get("model_version")))

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(len(seen))]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        version = register_champion(
            champion_settings, tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=11), class_names=CLASSES, image_size=IMAGE_SIZE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(s and s[-1][1] == version for s in seen):
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(30)

    assert version == "2"
    answers = [a for s in seen for a in s]
    assert {status for status, _ in answers} == {200}, "a request failed while the alias moved"
    for per_caller in seen:
        versions = [v for _, v in per_caller]
        assert versions[0] == "1" and versions[-1] == "2"
        first_new = versions.index("2")
        assert set(versions[first_new:]) == {"2"}, "a caller went back to the old version"
