"""What a release needs: one version (pyproject.toml, shown by --version), a CHANGELOG whose
sections follow the release convention, and the licence pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from consumer.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RELEASE = re.compile(r"^## \[(\d+)\.(\d+)\.(\d+)\] - \d{4}-\d{2}-\d{2}$")


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ghl-consumer {PYPROJECT['project']['version']}"


def test_changelog_sections_follow_the_release_convention() -> None:
    headings = [
        line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert headings[0] == "## [Unreleased]"
    releases = []
    for heading in headings[1:]:
        match = RELEASE.match(heading)
        assert match, f"not `## [X.Y.Z] - YYYY-MM-DD`: {heading!r}"
        releases.append(tuple(int(part) for part in match.groups()))
    assert releases == sorted(releases, reverse=True), "newest release first"


def test_the_licence_is_the_one_pyproject_names() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
