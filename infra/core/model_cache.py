"""The champion classifier (or another alias's), cached per process and re-checked against the registry.

One cache serves every place that scores with a registered version: the scoring stream's Spark
Python workers (reused across tasks, so the cache lives across micro-batches) and the model server.
The alias is re-read at most every ``settings.champion_check_s`` seconds, so a promotion or a
rollback reaches a running process without a restart; a version that fails to load is logged
once per check and the one already loaded keeps serving.

:func:`optional_classifier` follows an alias that may name nothing (the challenger the stream
shadow-scores with): None while no version holds it, re-checked at the same cadence, so its absence
costs a dictionary lookup; a version that fails to load is logged once and answers None.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from infra.registry import (
    CHAMPION,
    TAG_CHAMPION_VERSION,
    Classifier,
    RegistryConfig,
    RegistryError,
    RegistryUnreachable,
    load_classifier,
    version_by_alias,
    versions,
)

log = logging.getLogger(__name__)


class ModelCacheConfig(RegistryConfig, Protocol):
    """What the cache reads: where the model is, and how often to ask which version an alias names."""

    @property
    def champion_check_s(self) -> float: ...


@dataclass
class _Cached:
    classifier: Classifier
    version: str
    checked_at: float
    load_error: str | None = None  # why the version the alias names is not the one serving


_lock = threading.Lock()
# A few registries at most per process (tests point each test at its own); oldest dropped first.
_models: OrderedDict[tuple[str, str, str], _Cached] = OrderedDict()
_MAX_MODELS = 3
_FALLBACK_TRIES = 3  # older versions tried when a fresh process cannot load the champion


def current_classifier(
    settings: ModelCacheConfig, *, alias: str = CHAMPION, now: float | None = None
) -> tuple[Classifier, str]:
    """``(classifier, version)`` of the version holding ``alias``, loaded once and re-checked periodically."""
    key = (settings.mlflow_tracking_uri, settings.model_name, alias)
    now = time.monotonic() if now is None else now
    with _lock:
        cached = _models.get(key)
        if cached is not None and now - cached.checked_at < settings.champion_check_s:
            return cached.classifier, cached.version
        try:
            latest = version_by_alias(settings, alias)
        except RegistryUnreachable as exc:
            if cached is None:
                raise  # nothing loaded yet: nothing to keep serving
            return _serve_through_outage(cached, alias, exc, now)
        if cached is None:
            return _first_load(settings, key, alias, latest, now)
        if latest is not None and str(latest.version) == cached.version:
            cached.checked_at, cached.load_error = now, None
            return cached.classifier, cached.version
        # The alias moved (or vanished: keep serving what we have if loading fails).
        wanted = None if latest is None else str(latest.version)
        try:
            if wanted is None:
                raise RegistryError(f"alias {alias!r} no longer names a version")
            classifier, version = load_classifier(settings, wanted)
        except Exception as exc:  # noqa: BLE001 - whatever loading raised, the loaded version keeps serving
            # Logged here, not per row or request: the next try waits for the next check.
            log.warning(
                "%s version %s of %s failed to load; still serving version %s: %s",
                alias,
                "(alias gone)" if wanted is None else wanted,
                settings.model_name,
                cached.version,
                exc,
            )
            cached.checked_at = now
            named = "the alias names no version" if wanted is None else f"version {wanted} failed to load"
            cached.load_error = f"{alias} {named}; still serving version {cached.version}: {_one_line(exc)}"
            return cached.classifier, cached.version
        return _keep(key, classifier, version, now)


def _serve_through_outage(cached: _Cached, alias: str, exc: RegistryError, now: float) -> tuple[Classifier, str]:
    """The tracking server is down: the loaded version keeps serving, and says so (``load_failure``)."""
    error = f"{exc}; still serving {alias} version {cached.version}"
    if cached.load_error != error:  # logged once per outage, not at every check
        log.warning("%s", error)
    cached.checked_at, cached.load_error = now, error
    return cached.classifier, cached.version


def load_failure(settings: ModelCacheConfig, *, alias: str = CHAMPION) -> str | None:
    """Why this process does not serve the version ``alias`` names (None when it does, or has loaded nothing)."""
    with _lock:
        cached = _models.get((settings.mlflow_tracking_uri, settings.model_name, alias))
        return None if cached is None else cached.load_error


def _one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_load(settings: ModelCacheConfig, key: tuple[str, str, str], alias: str, latest: Any, now: float):
    if latest is None:
        raise RegistryError(f"model {settings.model_name!r} has no {alias!r} version yet: run 'lakesight train'")
    wanted = str(latest.version)
    try:
        classifier, version = load_classifier(settings, wanted)
    except Exception as exc:
        if alias != CHAMPION:
            raise
        # A fresh process (a new Spark Python worker, a restarted server) has no version loaded
        # to keep serving: it serves the one this champion replaced, as a running one would.
        classifier, version = _previous_champion(settings, latest, exc)
        cached = _keep(key, classifier, version, now)
        _models[
            key
        ].load_error = f"{alias} version {wanted} failed to load; serving version {version}: {_one_line(exc)}"
        log.warning("%s", _models[key].load_error)
        return cached
    return _keep(key, classifier, version, now)


def _previous_champion(settings: ModelCacheConfig, failed: Any, error: Exception) -> tuple[Classifier, str]:
    """The version ``failed`` replaced (its promotion tag), else the newest older one that loads."""
    replaced = (failed.tags or {}).get(TAG_CHAMPION_VERSION, "")
    older = sorted(
        (int(row.version) for row in versions(settings) if int(row.version) < int(failed.version)), reverse=True
    )
    candidates = ([replaced] if replaced else []) + [str(v) for v in older if str(v) != replaced]
    for version in candidates[:_FALLBACK_TRIES]:
        try:
            return load_classifier(settings, version)
        except Exception:  # noqa: BLE001 - try the next older version
            continue
    raise RegistryError(
        f"champion version {failed.version} failed to load and no earlier version does: {error}"
    ) from error


def _keep(key: tuple[str, str, str], classifier: Classifier, version: str, now: float) -> tuple[Classifier, str]:
    _models[key] = _Cached(classifier, version, now)
    _models.move_to_end(key)
    while len(_models) > _MAX_MODELS:
        _models.popitem(last=False)
    return classifier, version


@dataclass
class _Optional:
    loaded: tuple[Classifier, str] | None
    checked_at: float
    warned: set[str]  # versions whose failure to load was logged


_optional: dict[tuple[str, str, str], _Optional] = {}


def optional_classifier(
    settings: ModelCacheConfig, *, alias: str, now: float | None = None
) -> tuple[Classifier, str] | None:
    """``(classifier, version)`` of the version holding ``alias``, or None while none does (or it fails to load).

    Checked at most every ``settings.champion_check_s``; unlike :func:`current_classifier`, a vanished
    alias answers None at the next check (a challenger that was promoted or refused is not scored on).
    """
    key = (settings.mlflow_tracking_uri, settings.model_name, alias)
    now = time.monotonic() if now is None else now
    with _lock:
        entry = _optional.get(key)
        if entry is not None and now - entry.checked_at < settings.champion_check_s:
            return entry.loaded
        entry = entry or _Optional(None, now, set())
        entry.loaded = _follow(settings, alias, entry)
        entry.checked_at = now
        _optional[key] = entry
        return entry.loaded


def _follow(settings: ModelCacheConfig, alias: str, entry: _Optional) -> tuple[Classifier, str] | None:
    """What ``alias`` names now, loaded (the loaded one reused while the alias stays on it)."""
    try:
        latest = version_by_alias(settings, alias)
    except RegistryError as exc:  # the registry is unreachable: keep what was loaded until it answers
        _warn_once(settings, alias, entry, "lookup", exc)
        return entry.loaded
    if latest is None:
        return None
    wanted = str(latest.version)
    if entry.loaded is not None and entry.loaded[1] == wanted:
        return entry.loaded
    try:
        return load_classifier(settings, wanted)
    except Exception as exc:  # noqa: BLE001 - whatever loading raised, the caller goes on without this alias
        _warn_once(settings, alias, entry, wanted, exc)
        return None


def _warn_once(settings: ModelCacheConfig, alias: str, entry: _Optional, what: str, exc: Exception) -> None:
    # Once per version (or per lookup failure), not per check: an unloadable challenger is tried
    # again at every check, but must not flood the executors' logs.
    if what in entry.warned:
        return
    entry.warned.add(what)
    shown = "the alias lookup" if what == "lookup" else f"version {what}"
    log.warning("%s of %s: %s failed; going on without it: %s", alias, settings.model_name, shown, exc)


def forget_models() -> None:
    """Drop every cached classifier (tests; a process that must reload)."""
    with _lock:
        _models.clear()
        _optional.clear()
