"""The registry's aliases: split winners wait as challenger, losers get none; rollback moves the champion back,
records why, and refuses bad requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import registry
from infra.core import promotion
from infra.registry import RegistryError
from infra.settings import Settings
from tests.helpers.cli import lakesight
from tests.helpers.status import promote_versions, shadow_scored


def test_rollback_moves_the_champion_to_the_one_it_replaced_and_records_why(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    assert promote_versions(settings, [0.8, 0.9, 0.95]) == "3"

    done = promotion.rollback(settings, reason="  worse on today's images ")

    assert (done.from_version, done.to_version, done.reason) == ("3", "2", "worse on today's images")
    assert str(registry.champion_version(settings).version) == "2"
    tag = registry.client(settings).get_model_version(settings.model_name, "3").tags[registry.TAG_ROLLED_BACK]
    assert tag.endswith("to version 2: worse on today's images")
    again = promotion.rollback(settings, reason="again", to=1)
    assert (again.from_version, again.to_version) == ("2", "1")


@pytest.mark.parametrize(
    ("to", "reason", "message"),
    [
        (None, " ", "needs a reason"),
        ("7", "typo", "has no version 7"),
        ("2", "noop", "already the champion"),
    ],
)
def test_bad_rollbacks_are_refused_and_change_nothing(
    tmp_path: Path, to: str | None, reason: str, message: str
) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    promote_versions(settings, [0.8, 0.9])
    with pytest.raises(RegistryError, match=message):
        promotion.rollback(settings, reason=reason, to=to)
    assert str(registry.champion_version(settings).version) == "2"


def test_the_first_champion_has_nothing_to_roll_back_to(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    promote_versions(settings, [0.8])
    with pytest.raises(RegistryError, match="no previous champion: name one with --to"):
        promotion.rollback(settings, reason="bad")
    with pytest.raises(RegistryError, match="no 'champion' version"):
        promotion.rollback(Settings(state_dir=tmp_path / "empty"), reason="bad")


def test_lakesight_models_rollback_prints_what_it_did(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    promote_versions(settings, [0.8, 0.9])
    done = lakesight("models", "rollback", "--reason", "paged at 3am", state=settings.state_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"picked_up_within_s": None} == {
        "model_name": settings.model_name,
        "from_version": "2",
        "champion": "1",
        "reason": "paged at 3am",
        "picked_up_within_s": None,
    }
    refused = lakesight("models", "rollback", "--reason", "again", state=settings.state_dir)
    assert refused.returncode == 1 and refused.stderr.strip().startswith("error:") and "--to" in refused.stderr
    listed = lakesight("models", "--json", state=settings.state_dir)
    assert [row["aliases"] for row in json.loads(listed.stdout)] == ["", "champion"]


def test_a_newer_split_winner_supersedes_the_waiting_challenger_and_a_loser_gets_no_alias(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    assert promote_versions(settings, [0.9, 0.95, 0.97, 0.5], min_pairs=20) == "1"

    rows = {row.version: row for row in registry.versions(settings)}
    assert {v: row.aliases for v, row in rows.items()} == {"1": ("champion",), "2": (), "3": ("challenger",), "4": ()}
    decisions = {v: row.tags[registry.TAG_DECISION] for v, row in rows.items()}
    assert decisions == {"1": "champion", "2": "superseded", "3": "challenger", "4": "rejected"}
    assert (
        rows["2"].tags[registry.TAG_LIVE_REASON]
        == "version 3 became challenger while this one waited for live evidence"
    )
    assert rows["3"].tags[registry.TAG_CHAMPION_VERSION] == "1"

    # A winner promoted on the split alone moves the champion: the waiting challenger was compared
    # with the old one, so it stops being shadow-scored.
    assert promote_versions(settings, [0.99]) == "5"
    assert registry.version_by_alias(settings, registry.CHALLENGER) is None
    waited = next(row for row in registry.versions(settings) if row.version == "3")
    assert waited.tags[registry.TAG_DECISION] == "superseded"
    assert waited.tags[registry.TAG_LIVE_REASON] == "version 5 became champion while this one waited for live evidence"


def test_lakesight_models_decide_judges_the_challenger_on_live_labels(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    promote_versions(settings, [0.8, 0.9], min_pairs=settings.promotion_min_pairs)
    shadow_scored(settings, [("cat", "cat", "dog")] * 20, version="2")  # the challenger wrong on every label

    done = lakesight("models", "decide", "--json", state=settings.state_dir)

    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert (decision["challenger_version"], decision["outcome"], decision["b"], decision["c"]) == (
        "2",
        "refused",
        20,
        0,
    )
    assert decision["p_value"] == 2**-20 and decision["recorded"] is True
    assert str(registry.champion_version(settings).version) == "1"
    after = lakesight("models", "decide", state=settings.state_dir)
    assert after.returncode == 0 and "has no challenger waiting for live evidence" in after.stdout
    listed = {row["version"]: row for row in json.loads(lakesight("models", "--json", state=settings.state_dir).stdout)}
    assert (listed["2"]["aliases"], listed["2"]["decision"], listed["2"]["live_decision"]) == ("", "refused", "refused")
