"""``lakesight status``'s pipeline lines (``infra.cli.local``)."""

from __future__ import annotations

from infra.cli.local import _pipeline_rows


def test_status_shows_a_storage_outage_only_while_it_lasts() -> None:
    down = {
        "state": "waiting for storage",
        "storage": "unreachable since 2026-12-01T14:00:00+00:00",
        "storage_error": "blob storage unreachable for 10 s: ServiceRequestError: Connection refused",
    }
    lines = {row["what"]: row["value"] for row in _pipeline_rows({"stream": down})}
    assert lines["scoring stream"].startswith("waiting for storage")
    assert lines["blob storage"] == f"{down['storage']}: {down['storage_error']}"
    back = {"state": "running", "storage": None, "storage_error": None}
    assert "blob storage" not in {row["what"] for row in _pipeline_rows({"stream": back})}
