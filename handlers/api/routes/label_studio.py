"""``POST /api/label-studio``: Label Studio's webhook for annotations (created, updated, deleted).

The webhook is created with the shared event key as a custom ``aeg-sas-key`` header, so the same
dependency admits it (401 without or with a wrong key). The annotation's label goes through the
one label path of exports before the answer: a 200 means it is in ``images`` (or in
``label_rejects`` with its reason). A replayed delivery, or a storm of them, applies it once. A
deleted annotation gives its image back the label it replaced.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from handlers.api import safe_json
from handlers.api.deps import EventKeyDep, RequestRefused, ServiceDep, SettingsDep
from handlers.api.routes.events import _read_body
from handlers.intake.label_studio import apply_annotation, forget_annotations
from infra.core.labeling.label_studio import (
    WEBHOOK_PATH,
    LabelStudioError,
    annotation_from_webhook,
    deleted_from_webhook,
)

log = logging.getLogger(__name__)

LABEL_STUDIO_PATH = WEBHOOK_PATH

router = APIRouter()


@router.post(LABEL_STUDIO_PATH)
async def annotation_webhook(
    _key: EventKeyDep, request: Request, service: ServiceDep, settings: SettingsDep
) -> JSONResponse:
    body = await _read_body(request, settings.max_event_body_bytes)
    try:
        payload = safe_json.loads(body)
        annotation = annotation_from_webhook(payload)
        deleted = deleted_from_webhook(payload)
    except (safe_json.UntrustedJSONError, LabelStudioError, TypeError, ValueError) as exc:
        raise RequestRefused(400, f"not a Label Studio webhook payload: {exc}") from exc
    action = payload.get("action") if isinstance(payload, dict) else None
    if deleted is not None:
        restored = await run_in_threadpool(forget_annotations, service.lake, deleted)
        if restored:
            service.labels_arrived()
        return JSONResponse({"action": action, "applied": True, "deleted": len(deleted), "restored": restored})
    if annotation is None:
        log.info("Label Studio webhook %s ignored", action)
        return JSONResponse({"action": action, "applied": False})
    report = await run_in_threadpool(
        apply_annotation,
        settings,
        service.lake,
        annotation,
        source=f"label-studio:{request.client.host if request.client else '?'}",
        classes=settings.label_classes,
    )
    if report.merged and not report.skipped_replay:
        service.labels_arrived()  # the retraining policy looks at them, as at an export's
    return JSONResponse({"action": action, "applied": True, "labels": report.as_dict()})
