"""Every package of a project virtualenv is at the version its lock file names.

A lock that misses a package lets a fresh install (every CI run) take whatever PyPI published that
day: sentry-sdk 3.0 once made Label Studio exit at start on CI while this machine's older venv
passed. Checking the venv against its lock makes such a gap a failure here, before CI meets it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# pip, setuptools and wheel come with `python -m venv` and the installer upgrades pip itself.
INSTALLER_PACKAGES = {"pip", "setuptools", "wheel"}


def pinned_versions(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def installed_versions(venv: Path) -> dict[str, str]:
    listing = subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "list",
            "--format=json",
            "--exclude-editable",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {canonicalize_name(item["name"]): item["version"] for item in json.loads(listing)}


def drift_from_lock(installed: dict[str, str], pins: dict[str, str]) -> list[str]:
    """The installed packages the lock does not hold at their version, as ``name installed (lock: ...)``."""
    return [
        f"{name} {version} (lock: {pins.get(name, 'missing')})"
        for name, version in sorted(installed.items())
        if name not in INSTALLER_PACKAGES and pins.get(name) != version
    ]


def test_a_package_missing_from_the_lock_or_at_another_version_is_named() -> None:
    pins = {"sentry-sdk": "2.76.0", "django": "5.1.0"}
    installed = {"sentry-sdk": "3.0.0", "django": "5.1.0", "ast-serialize": "0.13.1", "pip": "25.0"}

    assert drift_from_lock(installed, pins) == [
        "ast-serialize 0.13.1 (lock: missing)",
        "sentry-sdk 3.0.0 (lock: 2.76.0)",
    ]


@pytest.mark.parametrize(
    ("venv", "lock"),
    [(".venv", "constraints.txt"), (".venv-labelstudio", "infra/local/label-studio-constraints.txt")],
)
def test_each_virtualenv_holds_exactly_what_its_lock_names(venv: str, lock: str) -> None:
    if not (ROOT / venv / "bin" / "python").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{venv} is missing: make install builds it")
        pytest.skip(f"{venv} is not built here (make install)")

    drift = drift_from_lock(installed_versions(ROOT / venv), pinned_versions(ROOT / lock))

    assert not drift, f"{venv} differs from {lock}; pin these there: {drift}"
