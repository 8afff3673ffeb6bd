"""Fixtures for the pipeline tests: real Prefect, real MLflow on SQLite, real buckets.

* ``prefect_server``: one session-wide ``prefect_test_harness()`` (a real API server in a
  subprocess) with PREFECT_HOME and result storage in a temp folder and analytics off, and
  the strict "semclip-gpu" limit created as set-up does.
* ``registry_templates``: MLflow's schema migrations cost seconds per database, so two
  SQLite files are made once (an empty registry, and one holding ``small_model_dir`` as
  version 1 = champion) and each test gets its own copy (``empty_registry`` /
  ``champion_registry``). They share one artifact folder; versions never collide there.
* ``pipeline_env``: a fresh SEMCLIP_HOME, bucket and registry for one test, set through the
  environment exactly as a worker would see it.

Load with ``pytest_plugins = ["conftest_pipeline"]`` (it loads ``conftest_storage`` too).
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fsspec import AbstractFileSystem
from PIL import Image

from semclip.registry.client import Registry
from semclip.registry.refs import CHAMPION
from semclip.synth import render_sample, sample_rng

pytest_plugins = ["conftest_storage"]

MODEL_NAME = "semclip-sem"
IMAGE_SIZE = 64  # the tiny backbone's input size: nothing is resized away
FAST_FIT = {"augment": False, "min_steps": 5, "max_steps": 5, "cv_folds": 2}
RUN_DATE = dt.date(2026, 11, 1)


@dataclass(frozen=True)
class RegistryTemplates:
    """Initialised MLflow databases to copy, and their shared artifact folder."""

    empty_db: Path
    champion_db: Path
    artifacts: Path
    cache: Path


@dataclass(frozen=True)
class PipelineEnv:
    """One test's SEMCLIP_HOME, bucket and registry (all also in the environment)."""

    home: Path
    bucket_url: str
    endpoint_url: str | None
    fs: AbstractFileSystem
    root: str
    registry: Registry


# --------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary Prefect API for the whole session, offline, with the "semclip-gpu" limit."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    from flows.setup import ensure_gpu_limit

    home = tmp_path_factory.mktemp("prefect-home")
    patch = pytest.MonkeyPatch()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for name, value in env.items():
        patch.setenv(name, value)
    updates = {
        PREFECT_HOME: str(home),
        PREFECT_LOCAL_STORAGE_PATH: str(home / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    try:
        with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=120):
            ensure_gpu_limit()
            yield
    finally:
        patch.undo()


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-backbone model (good, bridge, particle; one shot each) as a model directory."""
    from semclip import FitConfig, SemclipModel, load_backbone, save_model
    from semclip.model import SupportItem

    items = [
        SupportItem(image=png_bytes(s.image), label=label, mask=s.mask, uri=f"{label}-{i}")
        for label in ("good", "bridge", "particle")
        for i in range(1)
        for s in [render_sample(label, sample_rng(7, label, i), size=IMAGE_SIZE)]
    ]
    backbone = load_backbone("semclip-tiny", None, "cpu")
    model = SemclipModel.fit(backbone, items, config=FitConfig.from_dict(FAST_FIT))
    return save_model(model, tmp_path_factory.mktemp("small-model") / "model")


@pytest.fixture(scope="session")
def registry_templates(
    tmp_path_factory: pytest.TempPathFactory, small_model_dir: Path
) -> RegistryTemplates:
    """An empty registry and one with ``small_model_dir`` as version 1 = champion."""
    folder = tmp_path_factory.mktemp("mlflow-templates")
    artifacts, cache = folder / "mlartifacts", folder / "model-cache"
    empty = folder / "empty.db"
    registry = _registry(empty, artifacts, cache)
    registry.versions()  # creates the schema
    registry.experiment_id()  # and the experiment, with its artifact location
    champion = folder / "champion.db"
    shutil.copy(empty, champion)
    registry = _registry(champion, artifacts, cache)
    ref = registry.log_version(small_model_dir, run_name="template", metrics={"candidate.f1": 0.5})
    registry.set_alias(CHAMPION, ref.version)
    return RegistryTemplates(empty, champion, artifacts, cache)


def _registry(db: Path, artifacts: Path, cache: Path) -> Registry:
    return Registry(
        tracking_uri=f"sqlite:///{db}",
        model_name=MODEL_NAME,
        artifact_location=artifacts.as_uri(),
        cache_dir=cache,
    )


def copy_registry(templates: RegistryTemplates, which: str, folder: Path) -> Registry:
    """A private copy of the ``"empty"`` or ``"champion"`` template registry."""
    source = templates.empty_db if which == "empty" else templates.champion_db
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "mlflow.db"
    shutil.copy(source, target)
    return _registry(target, templates.artifacts, templates.cache)


@pytest.fixture
def champion_registry(registry_templates: RegistryTemplates, tmp_path: Path) -> Registry:
    """This test's registry: ``semclip-sem`` v1 (the small model) is champion."""
    return copy_registry(registry_templates, "champion", tmp_path / "registry-champion")


@pytest.fixture
def empty_registry(registry_templates: RegistryTemplates, tmp_path: Path) -> Registry:
    """This test's registry, with no model registered yet."""
    return copy_registry(registry_templates, "empty", tmp_path / "registry-empty")


# --------------------------------------------------------------------------- environment


def use_environment(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    bucket_url: str,
    endpoint_url: str | None,
    registry: Registry,
) -> None:
    """Point every SEMCLIP_* setting a flow reads at this test's home, bucket and registry."""
    for name in (
        "SEMCLIP_CONFIG",
        "SEMCLIP_BACKBONE",
        "SEMCLIP_PRETRAINED",
        "MLFLOW_REGISTRY_URI",
        "SEMCLIP_DASK_ADDRESS",
        "SEMCLIP_DASK_WORKERS",
        "SEMCLIP_DASK_PROCESSES",
    ):
        monkeypatch.delenv(name, raising=False)
    # shards in the flow's process whatever the machine ("auto" would start a Dask cluster
    # per flow run on 4+ cores); tests/test_flows_dask.py sets dask where it is the subject
    monkeypatch.setenv("SEMCLIP_TASK_RUNNER", "sequential")
    monkeypatch.setenv("SEMCLIP_HOME", str(home))
    monkeypatch.setenv("SEMCLIP_BUCKET", bucket_url)
    monkeypatch.setenv("SEMCLIP_MODEL_NAME", registry.model_name)
    monkeypatch.setenv("SEMCLIP_BATCH_SIZE", "4")
    monkeypatch.setenv("SEMCLIP_TIMEZONE", "UTC")
    # The nightly's report step (on in production) is tested in test_report_flow.py; the other
    # flow tests skip its rendering, which would double their time.
    monkeypatch.setenv("SEMCLIP_NIGHTLY_REPORT", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    if endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint_url)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    # Registry.from_settings puts its cache under SEMCLIP_HOME; share the template's one
    # (same versions, same model ids) so a test does not re-download the model.
    cache = home / "model-cache"
    if registry.cache_dir and not cache.exists():
        registry.cache_dir.mkdir(parents=True, exist_ok=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.symlink_to(registry.cache_dir, target_is_directory=True)


@pytest.fixture
def pipeline_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, champion_registry: Registry
) -> PipelineEnv:
    """A local (file://) bucket and a registry with a champion, wired into the settings."""
    from semclip.io.bucket import open_bucket

    home = tmp_path / "home"
    url = f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, create=True)
    use_environment(monkeypatch, home, url, None, champion_registry)
    return PipelineEnv(home, url, None, fs, root, champion_registry)


# --------------------------------------------------------------------------- data


def png_bytes(array: np.ndarray) -> bytes:
    """An encoded PNG of a uint8/uint16 array."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def synth_png(label: str, index: int, seed: int = 0) -> bytes:
    """One small synthetic SEM image of ``label``, deterministic in (seed, label, index)."""
    return png_bytes(render_sample(label, sample_rng(seed, label, index), size=IMAGE_SIZE).image)


def write_raw_dump(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    n_images: int,
    *,
    corrupt: bool = True,
    seed: int = 0,
) -> list[str]:
    """``raw/<date>/LOT7/W03/D<n>.png`` images, a KLARF for them, and two broken files.

    Returns the paths (inside ``fs``) of the good images. The broken ones are
    ``garbage.png`` (not an image at all) and ``truncated.png`` (a PNG cut short).
    """
    folder = f"{root}/raw/{run_date.isoformat()}/LOT7/W03"
    labels = ("good", "bridge", "particle")
    paths = []
    for i in range(n_images):
        path = f"{folder}/D{i + 1:04d}.png"
        fs.pipe_file(path, synth_png(labels[i % 3], i, seed))
        paths.append(path)
    rows = "\n".join(
        f" {i + 1} {10.5 * (i + 1)} {20.25 * (i + 1)} {i} {-i}" for i in range(n_images)
    )
    klarf = (
        'LotID "LOT7";\nWaferID "W03";\n'
        f"DefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;\nDefectList\n{rows};\nEndOfFile;\n"
    )
    fs.pipe_file(f"{folder}/W03.klarf", klarf.encode())
    if corrupt:
        fs.pipe_file(f"{folder}/garbage.png", b"this is not an image at all")
        whole = synth_png("good", 99, seed)
        fs.pipe_file(f"{folder}/truncated.png", whole[: len(whole) // 2])
    fs.invalidate_cache()
    return paths


def write_confirmed(
    fs: AbstractFileSystem, root: str, per_class: dict[str, int], seed: int = 3, wafers: int = 0
) -> None:
    """Confirmed shots with masks under ``confirmed/``, one CSV, older rows first.

    ``wafers`` > 0 puts shot i of each class under ``confirmed/img/LOT1/W<i % wafers>/``
    (the same bytes, so the same split), for tests of the wafer groups.
    """
    lines = ["image_uri,label,mask_uri,confirmed_at,reviewer"]
    stamp = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    for label, count in per_class.items():
        for i in range(count):
            sample = render_sample(label, sample_rng(seed, label, i), size=IMAGE_SIZE)
            folder = f"LOT1/W{i % wafers + 1:02d}/" if wafers else ""
            image = f"confirmed/img/{folder}{label}_{i}.png"
            fs.pipe_file(f"{root}/{image}", png_bytes(sample.image))
            mask = ""
            if label != "good":
                mask = f"confirmed/mask/{label}_{i}.png"
                fs.pipe_file(f"{root}/{mask}", png_bytes(sample.mask.astype(np.uint8) * 255))
            when = (stamp + dt.timedelta(hours=i)).isoformat()
            lines.append(f"{image},{label},{mask},{when},tester")
    fs.pipe_file(f"{root}/confirmed/shots.csv", ("\n".join(lines) + "\n").encode())
    fs.invalidate_cache()


class Kit:
    """The helpers and constants above, handed to tests as the ``kit`` fixture.

    (Test modules importing this plugin module directly would stop pytest from rewriting
    its asserts and warn about it; a fixture avoids that.)
    """

    MODEL_NAME = MODEL_NAME
    IMAGE_SIZE = IMAGE_SIZE
    FAST_FIT = FAST_FIT
    RUN_DATE = RUN_DATE
    copy_registry = staticmethod(copy_registry)
    use_environment = staticmethod(use_environment)
    png_bytes = staticmethod(png_bytes)
    synth_png = staticmethod(synth_png)
    write_raw_dump = staticmethod(write_raw_dump)
    write_confirmed = staticmethod(write_confirmed)


@pytest.fixture(scope="session")
def kit() -> Kit:
    """Helpers for building pipeline test data (see :class:`Kit`)."""
    return Kit()
