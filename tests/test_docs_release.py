"""Release hygiene: one version (``trioflow.__version__``) shown by ``trioflow --version``
and carried by the package metadata and the changelog; the MIT license in the metadata."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import trioflow

ROOT = Path(__file__).resolve().parent.parent


def test_trioflow_version_prints_the_one_version() -> None:
    script = Path(sys.executable).with_name("trioflow")  # the installed console script
    done = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"trioflow {trioflow.__version__}\n",
        "",
    )


def test_the_version_is_a_release_number_that_the_metadata_carries() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", trioflow.__version__)
    assert importlib.metadata.version("trioflow") == trioflow.__version__


def test_the_changelog_has_an_unreleased_section_and_an_entry_for_this_version() -> None:
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings[:2] == ["Unreleased", trioflow.__version__]


def test_the_metadata_names_the_mit_license_and_ships_its_file() -> None:
    metadata = importlib.metadata.metadata("trioflow")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the trioflow developers\n")
