"""The MLflow registry on a real SQLite backend: log, load offline, pyfunc, aliases, promote."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from semclip.artifact import load_model
from semclip.cli import main
from semclip.registry.cache import clear_model_cache
from semclip.registry.client import Registry
from semclip.registry.refs import CHAMPION, ModelNotFoundError, RegistryError, parse_model_uri

if TYPE_CHECKING:
    from conftest_pipeline import Kit

pytest_plugins = ["conftest_pipeline"]


@pytest.mark.slow
def test_champion_loads_self_contained_and_predicts_like_the_saved_model(
    kit: Kit, champion_registry: Registry, small_model_dir: Path
) -> None:
    ref = champion_registry.resolve()
    assert (ref.name, ref.version, ref.random_backbone) == (kit.MODEL_NAME, "1", True)
    model = champion_registry.load(f"models:/{kit.MODEL_NAME}@{CHAMPION}")
    assert (model.name, model.version) == (kit.MODEL_NAME, "1")
    local = champion_registry.local_dir(ref)
    assert (local / "backbone" / "open_clip_model.safetensors").is_file()  # weights inside
    assert local.is_relative_to(champion_registry.cache_dir)

    images = [kit.synth_png("particle", 3), kit.synth_png("good", 4)]
    got = model.predict(images, uris=["a", "b"])
    want = load_model(small_model_dir).predict(images, uris=["a", "b"])
    for g, w in zip(got, want, strict=True):
        assert g.predicted_class == w.predicted_class and g.mask_rle == w.mask_rle
        assert np.allclose(list(g.probabilities.values()), list(w.probabilities.values()))
    assert got[0].model_version == "1"


@pytest.mark.slow
def test_pyfunc_serves_the_registered_version(
    kit: Kit, champion_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_registry.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", champion_registry.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{kit.MODEL_NAME}@{CHAMPION}")
    frame = pd.DataFrame({"image": [kit.synth_png("bridge", 1), b"not an image"]})
    out = served.predict(frame)
    assert list(out["predicted_class"].notna()) == [True, False]
    assert out.loc[0, "predicted_class"] in {"good", "bridge", "particle"}
    assert "cannot read image" in out.loc[1, "error"]
    assert set(out.loc[0, "probabilities"]) == {"good", "bridge", "particle"}


@pytest.mark.slow
def test_pyfunc_rows_carry_the_registered_version_not_candidate(
    kit: Kit,
    champion_registry: Registry,
    small_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11: the generic pyfunc said 'candidate'; every row now says the version."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from semclip.artifact import save_model

    candidate = load_model(small_model_dir)
    candidate.version = "candidate"  # what the refit writes before a version exists
    second = champion_registry.log_version(save_model(candidate, tmp_path / "candidate"))
    assert second.version == "2"
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_registry.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{kit.MODEL_NAME}/2")
    frame = pd.DataFrame({"image": [kit.synth_png("bridge", 1), b"not an image"]})
    out = served.predict(frame)
    assert list(out["model_version"]) == ["2", "2"]  # the failed row too
    assert list(out["model_name"]) == [kit.MODEL_NAME] * 2
    first = mlflow.pyfunc.load_model(f"models:/{kit.MODEL_NAME}/1").predict(frame.iloc[:1])
    assert list(first["model_version"]) == ["1"]

    # Signature both ways and an input example that the model predicts.
    schema = served.metadata.get_output_schema()
    assert schema is not None and "model_version" in schema.input_names()
    assert {"probabilities", "bbox", "error"} <= set(schema.input_names())
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{kit.MODEL_NAME}/2"))
    example = served.metadata.load_input_example(str(local))
    assert list(example.columns) == ["image"]
    assert served.predict(example).loc[0, "error"] is None

    # No registry to ask (a bare copy of the model, MLflow unset or unreachable): null.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    rows = mlflow.pyfunc.load_model(str(local)).predict(frame.iloc[:1])
    assert rows.loc[0, "model_version"] is None
    assert list((tmp_path / "cwd").iterdir()) == []  # MLflow's default mlflow.db not made
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    rows = mlflow.pyfunc.load_model(str(local)).predict(frame.iloc[:1])
    assert rows.loc[0, "model_version"] is None


@pytest.mark.slow
def test_missing_model_version_and_alias_are_clear_errors(
    champion_registry: Registry, empty_registry: Registry
) -> None:
    with pytest.raises(ModelNotFoundError, match=r"has no version 7 .*\(versions: 1\)"):
        champion_registry.resolve(7)
    with pytest.raises(ModelNotFoundError, match="no alias 'challenger'"):
        champion_registry.resolve("challenger")
    with pytest.raises(ModelNotFoundError, match="no registered model 'semclip-sem'.*refit"):
        empty_registry.resolve()
    assert empty_registry.alias(CHAMPION) is None and empty_registry.versions() == []


@pytest.mark.slow
def test_promote_moves_champion_and_rolls_back(
    champion_registry: Registry, small_model_dir: Path
) -> None:
    second = champion_registry.log_version(small_model_dir, run_name="second")
    assert second.version == "2" and champion_registry.resolve().version == "1"
    previous, new = champion_registry.promote(2)
    assert (previous.version, new.version) == ("1", "2")
    assert champion_registry.resolve().version == "2"
    champion_registry.promote("1")  # rollback
    assert champion_registry.resolve().version == "1"
    assert champion_registry.versions() == ["1", "2"]


@pytest.mark.slow
def test_promote_cli(
    champion_registry: Registry,
    small_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SEMCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_registry.tracking_uri)
    monkeypatch.setenv("USER", "jdoe")
    champion_registry.log_version(
        small_model_dir, metrics={"candidate.f1": 0.75}, tags={"semclip.gate": "hold"}
    )
    with pytest.raises(SystemExit):  # the gate is overridden only with a stated reason
        main(["promote", "--version", "2"])
    assert "--reason" in capsys.readouterr().err
    assert champion_registry.resolve().version == "1"
    assert main(["promote", "--version", "2", "--reason", "hold-out too small"]) == 0
    out = capsys.readouterr().out
    assert "champion of semclip-sem: v1 -> v2" in out
    assert "f1 0.7500" in out and "RANDOM-WEIGHT" in out
    assert "semclip promote --version 1" in out and "--reason" in out
    promoted = champion_registry.resolve()
    assert promoted.version == "2"
    assert promoted.tags["semclip.promoted_by"] == "jdoe"
    assert promoted.tags["semclip.promoted_from"] == "1"
    assert promoted.tags["semclip.promoted_reason"] == "hold-out too small"
    assert promoted.tags["semclip.gate"] == "manual-promote"
    assert promoted.tags["semclip.gate_refit"] == "hold"  # the refit's own word, kept
    when = dt.datetime.fromisoformat(promoted.tags["semclip.promoted_at"])
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 120
    assert main(["promote", "--version", "1", "--reason", "rollback", "--by", "ops"]) == 0
    back = champion_registry.resolve()
    assert (back.version, back.tags["semclip.promoted_by"]) == ("1", "ops")
    assert back.tags["semclip.promoted_from"] == "2"
    # promoting the champion again moves nothing and keeps the rollback's record
    assert main(["promote", "--version", "1", "--reason", "again", "--by", "root"]) == 2
    assert "v1 is already champion of semclip-sem" in capsys.readouterr().err
    kept = champion_registry.resolve()
    assert (kept.tags["semclip.promoted_by"], kept.tags["semclip.promoted_reason"]) == (
        "ops",
        "rollback",
    )
    assert main(["promote", "--version", "99", "--reason", "x"]) == 2
    assert "has no version 99" in capsys.readouterr().err
    assert champion_registry.resolve().version == "1"


@pytest.mark.slow
def test_predict_cli_accepts_a_models_uri(
    kit: Kit, champion_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setenv("SEMCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_registry.tracking_uri)
    image = tmp_path / "one.png"
    image.write_bytes(kit.synth_png("good", 0))
    out = tmp_path / "out.parquet"
    clear_model_cache()
    assert (
        main(
            [
                "predict",
                "--model",
                f"models:/{kit.MODEL_NAME}@champion",
                "--out",
                str(out),
                str(image),
            ]
        )
        == 0
    )
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["model_version"] == "1" and rows[0]["model_name"] == kit.MODEL_NAME
    assert (
        main(["predict", "--model", f"models:/{kit.MODEL_NAME}/5", "--out", str(out), str(image)])
        == 2
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("m", None, "champion")),
        (3, ("m", "3", "")),
        ("03", ("m", "3", "")),
        ("challenger", ("m", None, "challenger")),
        ("models:/other/12", ("other", "12", "")),
        ("models:/other@champion", ("other", None, "champion")),
    ],
)
def test_parse_model_uri(value: object, expected: tuple[str, str | None, str]) -> None:
    assert parse_model_uri(value, "m") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["models:/only-name", "runs:/abc/model", "a b"])
def test_parse_model_uri_rejects(value: str) -> None:
    with pytest.raises(RegistryError):
        parse_model_uri(value, "m")


@pytest.mark.slow
def test_tracking_uri_is_not_leaked_into_the_environment(
    champion_registry: Registry, monkeypatch: pytest.MonkeyPatch, small_model_dir: Path
) -> None:
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    champion_registry.log_version(small_model_dir)
    assert "MLFLOW_TRACKING_URI" not in os.environ


@pytest.mark.slow
@pytest.mark.parametrize("configured", [True, False])
def test_artifact_location_setting_places_new_experiments(tmp_path: Path, configured: bool) -> None:
    from semclip.settings import SemclipSettings

    db = tmp_path / "db" / "mlflow.db"
    target = (tmp_path / "store" / "versions").as_uri()
    settings = SemclipSettings(
        home=tmp_path / "home",
        mlflow_tracking_uri=f"sqlite:///{db}",
        mlflow_artifact_location=target if configured else None,
    )
    registry = Registry.from_settings(settings)
    experiment = registry.client().get_experiment(registry.experiment_id())
    expected = target if configured else (db.parent / "mlartifacts").as_uri()
    assert experiment.artifact_location.rstrip("/") == expected.rstrip("/")


def test_models_logged_before_the_split_still_find_their_python_model() -> None:
    """A pyfunc pickled before semclip/registry.py became a package names the class as
    ``semclip.registry.SemclipPyfunc``; unpickling it must give the class that exists now."""
    import pickle

    from semclip.registry.pyfunc import SemclipPyfunc

    old_reference = b"csemclip.registry\nSemclipPyfunc\n."  # protocol 0 GLOBAL opcode
    assert pickle.loads(old_reference) is SemclipPyfunc


# ------------------------------------------------------------------ no pickle (issue 10, 12)
def _forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pickle/cloudpickle load from here on fails the test."""
    import pickle

    import cloudpickle

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a semclip model load unpickled something")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)


@pytest.mark.slow
def test_logged_version_is_models_from_code_and_loads_without_unpickling(
    kit: Kit, champion_registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No python_model.pkl is logged, so neither the nightly path (Registry.load) nor
    mlflow.pyfunc.load_model has a pickle to run; both load and predict with pickle banned."""
    import dataclasses

    import mlflow.artifacts
    import mlflow.pyfunc

    ref = champion_registry.resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_registry.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", champion_registry.tracking_uri)
    logged = Path(mlflow.artifacts.download_artifacts(ref.uri, dst_path=str(tmp_path / "dl")))
    names = {p.name for p in logged.rglob("*")}
    assert "MLmodel" in names and "python_model.pkl" not in names
    assert not [p for p in names if p.endswith((".pkl", ".pickle"))]
    assert "model_code_path" in (logged / "MLmodel").read_text()

    _forbid_unpickling(monkeypatch)
    clear_model_cache()
    fresh = dataclasses.replace(champion_registry, cache_dir=tmp_path / "cache")  # download
    model = fresh.load(ref)
    assert model.predict([kit.synth_png("bridge", 2)], uris=["x"])[0].ok
    served = mlflow.pyfunc.load_model(ref.uri)
    out = served.predict(pd.DataFrame({"image": [kit.synth_png("bridge", 2)]}))
    assert out.loc[0, "predicted_class"] in {"good", "bridge", "particle"}


# ------------------------------------------------------------------ integrity (issue 10, 5, 11)
def _flip_one_bit(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_cached_copy_is_dropped_and_downloaded_again(
    kit: Kit, champion_registry: Registry, tmp_path: Path
) -> None:
    import dataclasses
    import json

    from semclip.backbone import WEIGHTS_FILE, file_sha256

    registry = dataclasses.replace(champion_registry, cache_dir=tmp_path / "cache")
    ref = registry.resolve()
    weights = registry.local_dir(ref) / "backbone" / WEIGHTS_FILE
    recorded = json.loads((weights.parent.parent / "model.json").read_text())["backbone"]
    _flip_one_bit(weights)  # the cached copy rots on this worker's disk
    clear_model_cache()
    model = registry.load(ref)
    assert file_sha256(weights) == recorded["weights_sha256"]  # a fresh, good copy in place
    assert model.predict([kit.synth_png("particle", 1)], uris=["y"])[0].ok
    # a garbage heads file in the cache (no hash can vouch for it) is replaced too
    (weights.parent.parent / "heads.safetensors").write_bytes(b"garbage" * 50)
    clear_model_cache()
    assert registry.load(ref).predict([kit.synth_png("good", 1)], uris=["z"])[0].ok


@pytest.mark.slow
@pytest.mark.parametrize("damage", [b'{"format": "semc', b"\x89\xff\xfe not text \x00"])
def test_a_damaged_cached_model_json_is_dropped_and_downloaded_again(
    kit: Kit, champion_registry: Registry, tmp_path: Path, damage: bytes
) -> None:
    """Before: a cut-short model.json failed every load on that machine ("not valid JSON"),
    and non-UTF-8 bytes raised a bare UnicodeDecodeError naming no file, until someone
    deleted the cache folder by hand."""
    import dataclasses
    import json

    registry = dataclasses.replace(champion_registry, cache_dir=tmp_path / "cache")
    ref = registry.resolve()
    meta = registry.local_dir(ref) / "model.json"
    meta.write_bytes(damage)  # a half-written copy, or bit rot, at rest in the cache
    clear_model_cache()
    model = registry.load(ref)
    assert json.loads(meta.read_text())["format"] == "semclip-model"  # a fresh copy
    assert model.predict([kit.synth_png("good", 2)], uris=["w"])[0].ok


@pytest.fixture
def private_registry(small_model_dir: Path, tmp_path: Path) -> Registry:
    """A registry whose artifact store belongs to this test alone (it damages it)."""
    registry = Registry(
        tracking_uri=f"sqlite:///{tmp_path / 'own' / 'mlflow.db'}",
        model_name="semclip-damaged",
        artifact_location=(tmp_path / "own" / "mlartifacts").as_uri(),
        cache_dir=tmp_path / "own" / "cache",
    )
    registry.log_version(small_model_dir, run_name="to-damage")
    return registry


@pytest.mark.slow
def test_corrupt_or_deleted_registry_copy_is_a_named_error(
    private_registry: Registry, tmp_path: Path
) -> None:
    import shutil

    from semclip.backbone import WEIGHTS_FILE
    from semclip.registry.refs import CorruptRegistryModelError, MissingArtifactsError

    ref = private_registry.resolve(1)
    store = tmp_path / "own" / "mlartifacts"
    (stored,) = store.rglob(WEIGHTS_FILE)
    _flip_one_bit(stored)
    clear_model_cache()
    with pytest.raises(CorruptRegistryModelError, match=r"corrupt in the registry itself.*promote"):
        private_registry.load(ref)
    assert not list((tmp_path / "own" / "cache").rglob("model.json"))  # nothing bad kept

    (mlmodel,) = store.rglob("MLmodel")  # …/models/m-<id>/artifacts/MLmodel
    assert stored.is_relative_to(mlmodel.parent)
    shutil.rmtree(mlmodel.parent)  # the version's artifact folder is deleted
    with pytest.raises(MissingArtifactsError, match=r"artifacts cannot be read.*deleted"):
        private_registry.load(ref)
