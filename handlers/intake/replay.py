"""Replaying dead letters: ``lakesight events retry`` hands given-up (and, on request, refused) events
back to the event log after the fault behind them is fixed.

A replayed event is pending again from its first attempt, without an owner, so the running handler's
supervisor takes it within a moment (or the next ``lakesight serve`` at its start); its dead letter is
removed once the event log holds it. Letters whose raw event was truncated cannot be replayed and stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing

from handlers.api.payloads import Event
from handlers.intake.eventlog import EventLog, EventStatus
from infra.deadletters import DeadLetterTable
from infra.settings import Settings


def retry_dead_letters(settings: Settings, *, refused: bool = False, event_ids: Iterable[str] = ()) -> dict[str, int]:
    """Replay the dead letters of given-up events (``refused`` too: events refused before a fix, such as
    a raised size cap); only ``event_ids`` when given. Return ``{"replayed", "skipped"}``."""
    table = DeadLetterTable(settings)
    statuses = [EventStatus.FAILED, *([EventStatus.REFUSED] if refused else [])]
    wanted = list(event_ids)
    letters = table.replayable(statuses, wanted)
    if not letters:  # nothing to replay: create nothing
        return {"replayed": 0, "skipped": len(wanted)}
    events = [Event.from_json(letter.event) for letter in letters]
    with closing(EventLog(settings.state_dir / "handlers" / "events.db")) as log:
        replayed = log.requeue(events)
    table.forget(letter.event_id for letter in letters)
    return {"replayed": replayed, "skipped": max(0, len(wanted) - len(letters))}
