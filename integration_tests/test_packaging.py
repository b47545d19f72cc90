"""Airbyte packaging: both metadata.yaml files pass Airbyte's own schema (offline), and they agree with
the Dockerfile and pyproject.toml, so the image Airbyte pulls is the one the metadata names."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from unit_tests.shared_files import shared_file

ROOT = Path(__file__).resolve().parents[1]
SOURCE_METADATA = ROOT / "metadata.yaml"
DESTINATION_METADATA = ROOT / "destination_perly" / "metadata.yaml"


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    validator = shared_file("tools", "validate-airbyte-metadata")
    return subprocess.run(
        [sys.executable, str(validator), *map(str, paths)], capture_output=True, text=True, check=False
    )


def metadata(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["data"]


def dockerfile_stages() -> dict[str, str]:
    """Each build target's instructions, by stage name."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    named = {}
    for stage in stages:
        name = re.match(r"\S+(?: AS (\S+))?", stage)
        assert name is not None
        named[name.group(1) or ""] = stage
    return named


@pytest.mark.parametrize("path", [SOURCE_METADATA, DESTINATION_METADATA], ids=["source", "destination"])
def test_metadata_passes_airbytes_schema(path: Path) -> None:
    result = validate(path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"OK {path}"


def test_validator_rejects_metadata_without_required_fields(tmp_path: Path) -> None:
    broken = yaml.safe_load(SOURCE_METADATA.read_text(encoding="utf-8"))
    del broken["data"]["definitionId"]
    broken["data"]["connectorType"] = "sink"
    path = tmp_path / "metadata.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")

    result = validate(path)

    assert result.returncode == 1
    assert "definitionId" in result.stdout
    assert "$.data.connectorType" in result.stdout


def test_source_may_only_reach_stripe_and_destination_only_its_configured_host() -> None:
    assert metadata(SOURCE_METADATA)["allowedHosts"]["hosts"] == ["api.stripe.com"]
    assert metadata(DESTINATION_METADATA)["allowedHosts"]["hosts"] == ["${store.host}"]


def test_each_connector_has_its_own_type_and_definition_id() -> None:
    source, destination = metadata(SOURCE_METADATA), metadata(DESTINATION_METADATA)

    assert (source["connectorType"], destination["connectorType"]) == ("source", "destination")
    assert source["definitionId"] != destination["definitionId"]
    # Refreshes are a destination feature: the store keeps generation_id per row.
    assert destination["supportsRefreshes"] is True


@pytest.mark.parametrize(
    ("path", "target", "script"),
    [
        (SOURCE_METADATA, "source", "source-perly-stripe"),
        (DESTINATION_METADATA, "destination", "destination-perly"),
    ],
    ids=["source", "destination"],
)
def test_metadata_dockerfile_and_pyproject_agree(path: Path, target: str, script: str) -> None:
    data = metadata(path)
    stage = dockerfile_stages()[target]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    assert f"io.airbyte.name={data['dockerRepository']}" in stage
    assert data["dockerImageTag"] == project["version"]
    assert re.search(rf"^ARG VERSION={re.escape(project['version'])}$", stage, re.M)
    assert script in project["scripts"]
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', stage, re.M)
    assert entrypoint is not None
    assert entrypoint.group(1).endswith(f"/{script}")
    assert f'AIRBYTE_ENTRYPOINT="{entrypoint.group(1)}"' in stage
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"ARG BASE_IMAGE={data['connectorBuildOptions']['baseImage']}\n" in dockerfile


@pytest.mark.parametrize("target", ["source", "destination"])
def test_images_run_as_the_base_images_non_root_user(target: str) -> None:
    users = re.findall(r"^USER (\S+)", dockerfile_stages()[target], re.M)

    assert users[-1] == "airbyte"


def test_destination_image_keeps_sqlite_on_a_volume_at_the_configs_default_path() -> None:
    from destination_perly.config import DOCKER_SQLITE_PATH

    stage = dockerfile_stages()["destination"]

    assert DOCKER_SQLITE_PATH == "/local/perly.db"
    assert re.search(r"^VOLUME /local$", stage, re.M)
