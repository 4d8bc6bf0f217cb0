"""Label Studio's annotations into the one label path of exports (``handlers.intake.label_exports.apply_export``).

Each annotation becomes an entry naming its image by the hand-off's task id (kept in the task's
data) and the copy's URL, versioned by the annotation's ``updated_at``: the MERGE keeps the newest
label per image, so pulling the same annotations again changes nothing, and an edited annotation
(a newer ``updated_at``) replaces the label it edited.
"""

from __future__ import annotations

import hashlib

from handlers.intake.label_exports import LabelEntry, LabelReport, apply_export, label_time
from infra.core.labeling.label_studio import Annotation, LabelStudioClient
from infra.lake import Lake
from infra.settings import Settings


def annotation_entries(annotations: list[Annotation]) -> list[LabelEntry]:
    """One export entry per annotation (an annotation without a single choice names class "")."""
    return [
        LabelEntry(
            refs=(a.image,) if a.image else (),
            label=a.label or "",
            labeled_at=label_time(a.updated_at, f"annotation {a.annotation_id}"),
            task_id=a.task_id,
        )
        for a in annotations
    ]


def apply_annotation(
    settings: Settings, lake: Lake, annotation: Annotation, *, source: str, classes: list[str]
) -> LabelReport:
    """Apply one annotation (a webhook's): once per annotation and version, whatever the deliveries."""
    return apply_export(
        settings,
        lake,
        annotation_entries([annotation]),
        event_id=f"label-studio-{annotation.annotation_id}@{annotation.updated_at}",
        export_url=source,
        classes=classes,
    )


def pull_labels(
    settings: Settings, lake: Lake, client: LabelStudioClient, project: int, *, classes: list[str]
) -> LabelReport:
    """Apply every annotation of ``project``; its MERGE carries a transaction id named after the
    annotations' versions, so a pull that finds nothing new commits nothing."""
    annotations = sorted(client.annotations(project), key=lambda a: (a.annotation_id, a.updated_at))
    versions = "\n".join(f"{a.annotation_id}@{a.updated_at}" for a in annotations)
    event_id = f"label-studio-{project}-{hashlib.sha256(versions.encode()).hexdigest()[:24]}"
    return apply_export(
        settings,
        lake,
        annotation_entries(annotations),
        event_id=event_id,
        export_url=f"{client.url}/projects/{project}",
        classes=classes,
    )
