"""The micro-batcher sheds load when its queue is full and refuses work once its task is gone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from infra.settings import Settings
from infra.web import RequestRefused
from serving import batcher as batching
from tests.helpers.images import solid_png


def test_a_full_queue_answers_503_at_once_and_the_queued_requests_are_served(
    champion_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "MAX_QUEUED_REQUESTS", 2)
    release = threading.Event()

    def held_champion(settings: Settings):  # the real champion, after the test lets the model run
        release.wait(30)
        return batching.served_classifier(settings)

    async def scenario() -> tuple[list[str], str]:
        micro = batching.MicroBatcher(champion_settings, held_champion)
        await micro.start()
        try:
            first = asyncio.ensure_future(micro.classify([solid_png(1)]))
            await asyncio.sleep(0.2)  # taken off the queue: the model thread now waits
            queued = [asyncio.ensure_future(micro.classify([solid_png(v)])) for v in (2, 3)]
            await asyncio.sleep(0.05)
            with pytest.raises(RequestRefused) as refused:
                await micro.classify([solid_png(4)])
            release.set()
            answers = await asyncio.gather(first, *queued)
        finally:
            release.set()
            await micro.stop()
        return [a.model_version for a in answers], f"{refused.value.status_code} {refused.value.message}"

    versions, refusal = asyncio.run(scenario())
    assert versions == ["1", "1", "1"]
    assert refusal.startswith("503 busy: 2 requests already wait")


def test_a_batcher_whose_task_is_gone_refuses_instead_of_hanging(champion_settings: Settings) -> None:
    async def scenario() -> RequestRefused:
        micro = batching.MicroBatcher(champion_settings)
        await micro.start()
        await micro.stop()  # the task ends, as it would if it died
        with pytest.raises(RequestRefused) as refused:
            await asyncio.wait_for(micro.classify([solid_png(1)]), 5)
        return refused.value

    refusal = asyncio.run(scenario())
    assert refusal.status_code == 503 and "not running" in refusal.message


def test_the_queue_is_bounded_in_image_bytes(champion_settings: Settings) -> None:
    image = solid_png(1)
    settings = champion_settings.model_copy(update={"serve_max_inflight_bytes": 2 * len(image)})
    entered, release = threading.Event(), threading.Event()

    def held_champion(settings: Settings):  # the real champion, once the test lets the model run
        entered.set()
        release.wait(30)
        return batching.served_classifier(settings)

    async def scenario() -> tuple[list[str], RequestRefused, int]:
        micro = batching.MicroBatcher(settings, held_champion)
        await micro.start()
        try:
            first = asyncio.ensure_future(micro.classify([image]))
            await asyncio.to_thread(entered.wait, 30)  # off the queue: the model thread holds it
            queued = asyncio.ensure_future(micro.classify([image, image]))  # the whole byte budget
            while micro.queued_bytes == 0:
                await asyncio.sleep(0)
            with pytest.raises(RequestRefused) as refused:
                await micro.classify([image])
            waiting = micro.queued_bytes
            release.set()
            answers = await asyncio.gather(first, queued)
        finally:
            release.set()
            await micro.stop()
        return [a.model_version for a in answers], refused.value, waiting

    versions, refusal, waiting = asyncio.run(scenario())
    assert versions == ["1", "1"] and waiting == 2 * len(image)
    assert refusal.status_code == 503 and refusal.retry_after_s == 1
    assert f"{2 * len(image)} image bytes already wait" in refusal.message
