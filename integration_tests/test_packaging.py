"""Packaging: both metadata.yaml files pass Airbyte's own schema (offline) and agree with the
Dockerfile and pyproject.toml (so the image Airbyte pulls is the one the metadata names, and the
version and documentation URL are written once), and a plain `pip install .` gives a `perly` command
that syncs from any directory without the repository."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from integration_tests.stripe_emulator import Emulator
from unit_tests.shared_files import shared_file

ROOT = Path(__file__).resolve().parents[1]
SOURCE_METADATA = ROOT / "metadata.yaml"
DESTINATION_METADATA = ROOT / "destination_perly" / "metadata.yaml"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


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


def test_documentation_url_is_one_value_everywhere() -> None:
    from destination_perly.destination import DestinationPerly
    from source_perly_stripe.source import SourcePerlyStripe

    url = PROJECT["urls"]["Documentation"]
    logger = logging.getLogger("test")

    assert url.startswith("https://")
    assert ".invalid" not in url
    assert SourcePerlyStripe().spec(logger).documentationUrl == url
    assert DestinationPerly().spec(logger).documentationUrl == url
    assert metadata(SOURCE_METADATA)["documentationUrl"] == url
    assert metadata(DESTINATION_METADATA)["documentationUrl"] == url
    assert url in (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_names_the_images_at_pyprojects_version() -> None:
    tags = re.findall(
        r"local/(?:source-perly-stripe|destination-perly):(\S+?)[\s`]", (ROOT / "README.md").read_text()
    )

    assert tags
    assert set(tags) == {PROJECT["version"]}


# ---------------------------------------------------------------------------------------------------
# A plain (not editable) `pip install .` into a venv of its own, used from another directory.

INSTALL_VENV = ROOT / "var" / "packaging-venv"
NOT_PACKAGED = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a venv where a copy of this tree is installed with a plain `pip install`.

    The venv is made fresh, with every dependency, whenever pyproject's dependencies change; otherwise
    only the project is reinstalled (the dependencies take minutes to install on a busy machine)."""
    copy = tmp_path_factory.mktemp("pip-install") / "perly-stripe"
    shutil.copytree(ROOT, copy, ignore=NOT_PACKAGED)  # so the build writes nothing into the tree
    stamp = hashlib.sha256(json.dumps(PROJECT["dependencies"]).encode()).hexdigest()
    python = INSTALL_VENV / "bin" / "python"
    if not (INSTALL_VENV / "dependencies.sha256").is_file() or (
        (INSTALL_VENV / "dependencies.sha256").read_text() != stamp
    ):
        shutil.rmtree(INSTALL_VENV, ignore_errors=True)
        venv.create(INSTALL_VENV, with_pip=True)
        pip(python, str(copy))
        (INSTALL_VENV / "dependencies.sha256").write_text(stamp)
    else:
        pip(python, "--no-deps", "--force-reinstall", str(copy))
    return INSTALL_VENV / "bin"


def run_installed(bin_dir: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command of the venv, from `cwd`, with nothing of this repository on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_installed_package_is_imported_from_the_venv_and_carries_no_test_code(
    installed: Path, tmp_path: Path
) -> None:
    code = "import perly_runner, source_perly_stripe, destination_perly; print(perly_runner.__file__)"
    where = run_installed(installed, tmp_path, "python", "-c", code)
    tests = run_installed(installed, tmp_path, "python", "-c", "import integration_tests")

    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(INSTALL_VENV))
    assert "No module named 'integration_tests'" in tests.stderr


@pytest.mark.slow
def test_installed_perly_schedule_without_pyairbyte_says_how_to_install_it(
    installed: Path, tmp_path: Path
) -> None:
    (tmp_path / "source.json").write_text(json.dumps({"api_key": "sk_test_perly_demo"}))
    (tmp_path / "destination.json").write_text(json.dumps({"store": {"store_type": "sqlite"}}))

    done = run_installed(
        installed, tmp_path, "perly", "schedule", "--source-config", "source.json", "--destination-config",
        "destination.json",
    )  # fmt: skip

    assert done.returncode == 1
    assert "pip install 'perly-stripe[pyairbyte]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.emulator
@pytest.mark.slow
def test_installed_perly_sync_runs_from_another_directory_full_then_incremental(
    installed: Path, tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    from integration_tests.demo import DEMO_KEY, emulator_source_config

    emulator = emulator_factory(customers=30, seed=5)
    (tmp_path / "source.json").write_text(json.dumps(emulator_source_config(emulator.url)))
    (tmp_path / "destination.json").write_text(
        json.dumps({"store": {"store_type": "sqlite", "path": "perly.db"}})
    )
    sync = ("perly", "sync", "--source-config", "source.json", "--destination-config", "destination.json")

    first = run_installed(installed, tmp_path, *sync)
    emulator.advance(days=2)
    second = run_installed(installed, tmp_path, *sync, "--html", "report.html")

    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Sync (full)" in first.stdout
    assert "Sync (incremental, from the saved state)" in second.stdout
    assert json.loads((tmp_path / "var" / "state.json").read_text())  # the default, beside the configs
    customers = sqlite3.connect(tmp_path / "perly.db").execute("SELECT count(*) FROM stripe_customers")
    assert customers.fetchone()[0] > 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not (tmp_path / "var" / "sync-run" / "source_config.json").exists()
    assert DEMO_KEY not in first.stdout + first.stderr + second.stdout + second.stderr
