"""Micro-batching: concurrent requests share one model call.

Requests wait on an asyncio queue; one task takes what is queued (up to a cap of images) and
runs the champion on it in a single worker thread, so the event loop keeps accepting requests
while the model computes. Only when the previous batch held several requests, i.e. callers are
concurrent, does it wait a few milliseconds for more: a lone caller never pays that wait.
A request's images always stay in one model call, so they are answered by one model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from infra.core.model_cache import current_classifier
from infra.registry import Classifier
from infra.settings import Settings
from infra.web import RequestRefused
from serving.admission import busy

log = logging.getLogger(__name__)

ChampionLookup = Callable[[Settings], tuple[Classifier, str]]
# Requests waiting for the model beyond this (or beyond serve_max_inflight_bytes of images) are
# answered 503 with Retry-After at once: an overloaded server sheds load instead of holding every
# body in memory until clients time out.
MAX_QUEUED_REQUESTS = 512


def served_classifier(settings: Settings) -> tuple[Classifier, str]:
    """The version holding ``settings.serve_alias`` (the champion unless a deployment says otherwise)."""
    return current_classifier(settings, alias=settings.serve_alias)


@dataclass
class Scored:
    """One request's answer: per-image rows (label, confidence, probabilities, error) and the model."""

    rows: list[dict[str, Any]]
    class_names: list[str]
    model_version: str


@dataclass
class _Pending:
    contents: list[bytes]
    future: asyncio.Future[Scored]
    size: int  # image bytes, counted in MicroBatcher.queued_bytes while queued


def _log_if_died(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the micro-batcher stopped: %s", task.exception())


class MicroBatcher:
    def __init__(self, settings: Settings, champion: ChampionLookup = served_classifier) -> None:
        self.settings = settings
        self._champion = champion
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self._task: asyncio.Task[None] | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="lakesight-model")
        self._last_requests = 1
        self.batches = 0
        self.batched_images = 0
        self.version: str | None = None  # the version of the last model call
        # Image bytes waiting in the queue, bounded by serve_max_inflight_bytes (on the event loop only).
        self.queued_bytes = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lakesight-micro-batcher")
        self._task.add_done_callback(_log_if_died)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._model_thread.shutdown(wait=True)

    async def classify(self, contents: Sequence[bytes]) -> Scored:
        """Score ``contents`` with the champion, batched with whatever else is in flight."""
        if self._task is None or self._task.done():
            raise RequestRefused(503, "the model server's batcher is not running")
        size = sum(len(c) for c in contents)
        if self.queued_bytes + size > self.settings.serve_max_inflight_bytes:
            raise busy(f"{self.queued_bytes} image bytes already wait for the model")
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(list(contents), future, size))
        except asyncio.QueueFull:
            raise busy(f"{MAX_QUEUED_REQUESTS} requests already wait for the model") from None
        self.queued_bytes += size
        return await future

    async def model(self) -> tuple[Classifier, str]:
        """The champion as the next batch will see it (loads it on first use)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, self._champion, self.settings)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._gather()
            self._last_requests = len(pending)
            try:
                answers = await loop.run_in_executor(self._model_thread, self._score, pending)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, answer in zip(pending, answers, strict=True):
                if not item.future.done():  # the caller may have gone away
                    item.future.set_result(answer)

    async def _gather(self) -> list[_Pending]:
        pending = await self._gather_queued()
        self.queued_bytes -= sum(item.size for item in pending)
        return pending

    async def _gather_queued(self) -> list[_Pending]:
        pending = [await self._queue.get()]
        images = len(pending[0].contents)
        cap = self.settings.serve_batch_images
        wait_s = self.settings.serve_batch_wait_ms / 1000 if self._last_requests > 1 else 0.0
        deadline = asyncio.get_running_loop().time() + wait_s
        while images < cap:
            try:
                if self._queue.empty() and wait_s > 0:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    item = self._queue.get_nowait()
            except (TimeoutError, asyncio.QueueEmpty):
                break
            pending.append(item)
            images += len(item.contents)
        return pending

    def _score(self, pending: list[_Pending]) -> list[Scored]:
        classifier, version = self._champion(self.settings)
        contents = [c for item in pending for c in item.contents]
        # Records once per batch: per-request pandas slicing cost more than the model at 8 callers.
        rows = classifier.classify(contents).to_dict("records")
        self.batches += 1
        self.batched_images += len(contents)
        self.version = version
        names = list(classifier.class_names)
        answers, start = [], 0
        for item in pending:
            end = start + len(item.contents)
            answers.append(Scored(rows[start:end], names, version))
            start = end
        return answers
