"""The `semclip` command: fit and predict in-process, --help through the console script."""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from semclip import PredictConfig, SemclipModel, load_model, save_model
from semclip.cli import main
from semclip.io.schema import validate_table


def predict(model_dir: Path, out: Path, *inputs: str | Path, options: tuple[str, ...] = ()) -> int:
    """`semclip predict` in-process; returns the exit code."""
    args = ["predict", "--model", str(model_dir), "--out", str(out), *options]
    return main([*args, *map(str, inputs)])


def fit(data: Path, out: Path, *options: str) -> int:
    """`semclip fit` on the tiny backbone in-process; returns the exit code."""
    return main(["fit", "--data", str(data), "--out", str(out), *options])


@pytest.fixture(scope="module")
def model_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    assert fit(synth_dir, out, "--shots", "2", "--seed", "0", "--backbone", "semclip-tiny") == 0
    return out


@pytest.mark.slow
def test_fit_writes_a_loadable_model(model_dir: Path) -> None:
    model = load_model(model_dir, device="cpu")
    assert model.classes == ("good", "bridge", "particle", "scratch")
    assert model.lineage["seed"] == 0 and model.backbone.random_weights
    assert model.lineage["shots_per_class"] == {"good": 2, "bridge": 2, "particle": 2, "scratch": 2}
    assert model.calibration.method == "cross-validation"


@pytest.mark.slow
def test_predict_writes_parquet_with_error_rows(
    model_dir: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = sorted((synth_dir / "images").rglob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "sub" / "p.parquet"
    code = predict(model_dir, out, synth_dir / "images", bad)
    assert code == 0
    assert "1 failed" in capsys.readouterr().out
    table = pq.read_table(out)
    validate_table(table)
    rows = table.to_pylist()
    assert len(rows) == len(images) + 1
    assert [r["image_uri"] for r in rows] == [*map(str, images), str(bad)]
    assert rows[-1]["error"] and str(bad) in rows[-1]["error"]
    assert all(r["error"] is None and r["predicted_class"] for r in rows[:-1])


@pytest.mark.slow
def test_predict_fails_when_nothing_runs(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    out = tmp_path / "p.parquet"
    assert predict(model_dir, out, bad, tmp_path / "gone.png") != 0
    assert "0 images predicted, 2 failed" in capsys.readouterr().out
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert predict(model_dir, out, empty) != 0


@pytest.mark.slow
def test_predict_keeps_the_models_stored_settings_unless_overridden(
    fitted_model: SemclipModel, query_paths: list[Path], tmp_path: Path
) -> None:
    stored = replace(fitted_model, predict_config=PredictConfig(pixel_size_nm=2.0))
    model_dir = save_model(stored, tmp_path / "model")
    images = query_paths[:3]
    assert predict(model_dir, tmp_path / "a.parquet", *images) == 0
    options = ("--pixel-size-nm", "3")
    assert predict(model_dir, tmp_path / "b.parquet", *images, options=options) == 0
    kept = pq.read_table(tmp_path / "a.parquet").to_pylist()
    overridden = pq.read_table(tmp_path / "b.parquet").to_pylist()
    assert any(row["defect_area_px"] for row in kept)
    for row in kept:
        assert row["defect_area_nm2"] == 4.0 * row["defect_area_px"]
    for row in overridden:
        assert row["defect_area_nm2"] == 9.0 * row["defect_area_px"]


def test_predict_with_a_missing_model_is_a_clear_error(
    tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert predict(tmp_path, tmp_path / "p.parquet", synth_dir / "images") == 2
    assert "no semclip model" in capsys.readouterr().err


def test_fit_lists_rows_escaping_the_data_folder(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    outside = tmp_path / "outside.png"
    shutil.copy(next((data / "images" / "good").glob("*.png")), outside)
    with (data / "manifest.csv").open() as fh:
        n_rows = sum(1 for _ in csv.DictReader(fh))
    with (data / "manifest.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["../outside.png", "good", "", "W1-00", "x"])
    code = fit(data, tmp_path / "m", "--shots", "1", "--backbone", "semclip-tiny")
    assert code == 2
    err = capsys.readouterr().err
    assert f"row {n_rows + 1}" in err and "../outside.png" in err and "outside the data set" in err
    assert not (tmp_path / "m").exists()


def test_local_dir_backbone_refuses_pretrained(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    backbone = ("--backbone", f"local-dir:{tmp_path}", "--pretrained", "foo")
    code = fit(synth_dir, tmp_path / "m", "--shots", "1", *backbone)
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pretrained" in err and "local-dir:" in err


def _console_script() -> Path:
    script = Path(sys.executable).with_name("semclip")
    if not script.is_file():
        found = shutil.which("semclip")
        assert found is not None, "the semclip console script is not installed (make install)"
        script = Path(found)
    return script


@pytest.mark.slow
def test_help_through_the_console_script() -> None:
    """One subprocess (importing torch costs seconds): the installed entry point works."""
    result = subprocess.run(
        [str(_console_script()), "fit", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "usage: semclip fit" in result.stdout
    for option in ("--data", "--shots", "--seed", "--backbone", "--pretrained", "--out"):
        assert option in result.stdout


def test_predict_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: semclip predict" in text
    for option in ("--model", "--out", "images", "--pixel-size-nm", "--tiff-page"):
        assert option in text


@pytest.mark.slow
def test_top_level_help_imports_no_command_module() -> None:
    """`semclip --help` lists every command without torch; a command loads only its module."""
    code = (
        "import sys; from semclip.cli import build_parser, COMMANDS\n"
        "text = build_parser(['--help']).format_help()\n"
        "print(all(name in text for name in COMMANDS), 'torch' in sys.modules)\n"
        "build_parser(['eval', '--help'])\n"
        "print('semclip.cli.eval_cmd' in sys.modules, 'semclip.cli.fit_cmd' in sys.modules, "
        "'mlflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True", "False", "False"]


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something: ``parser`` itself, or those of its sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for child in a.choices.values() for leaf in _leaf_parsers(child)]


def test_every_command_registers_under_its_name() -> None:
    from semclip.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert sub.choices[name].prog == f"semclip {name}"
        command = sub.choices[name]
        for parser in _leaf_parsers(command):  # `review export`, `review import`
            func = parser.get_default("func") or command.get_default("func")
            assert callable(func), f"{parser.prog}: the full parser"
        others = [c for c in COMMANDS if c != name]
        assert all(sub.choices[c].get_default("func") is None for c in others)


def test_promote_default_alias_is_the_registry_champion() -> None:
    from semclip.cli import promote_cmd
    from semclip.registry.refs import CHAMPION

    assert promote_cmd.CHAMPION == CHAMPION


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"semclip {version('semclip')}"


def test_fit_offline_fails_fast_naming_what_to_pass(
    synth_dir: Path,
    tmp_path: Path,
    unreachable_hub: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's `semclip fit` (default backbone) on a worker without the hub."""
    for name in ("SEMCLIP_BACKBONE", "SEMCLIP_PRETRAINED"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    assert fit(synth_dir, tmp_path / "m", "--shots", "1") == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    for option in ("--backbone local-dir:", "--pretrained /path/", "SEMCLIP_BACKBONE"):
        assert option in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_fit_takes_its_backbone_from_the_settings(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMCLIP_BACKBONE", "semclip-tiny")
    monkeypatch.setenv("SEMCLIP_PRETRAINED", "none")
    assert fit(synth_dir, tmp_path / "m", "--shots", "1", "--no-augment") == 0
    backbone = load_model(tmp_path / "m").backbone
    assert backbone.name == "semclip-tiny" and backbone.random_weights


@pytest.mark.slow
def test_fit_crops_the_databar_synth_json_records(model_dir: Path, synth_dir: Path) -> None:
    """Like eval, fit takes the databar from a synthetic set's synth.json unless told."""
    import json

    info = json.loads((synth_dir / "synth.json").read_text())
    assert info["databar"] == "bottom" and info["databar_rows"] > 0
    crop = load_model(model_dir, device="cpu").preprocess.databar
    assert (crop.top, crop.bottom) == (0, info["databar_rows"])


def test_every_option_of_every_command_says_what_it_does() -> None:
    """Issue 11: help text for every option (a bare "(recipe)" or a letter says nothing)."""
    from semclip.cli import COMMANDS, build_parser

    missing = []
    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for parser in _leaf_parsers(sub.choices[name]):
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction) or not action.option_strings:
                    continue
                words = (action.help or "").replace("(recipe)", "").split()
                if len(words) < 3:
                    missing.append(f"{parser.prog} {action.option_strings[-1]}: {action.help!r}")
    assert not missing, "\n".join(missing)


def test_log_lines_do_not_break_progress_bars(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 11: a log line written while a bar is drawn starts a line of its own."""
    import logging

    from tqdm import tqdm

    from semclip.cli import main, synth_cmd

    def run(args: argparse.Namespace) -> int:
        for i in tqdm(range(3), desc="work", mininterval=0):
            logging.getLogger("semclip.test").info("step %d done", i)
        return 0

    monkeypatch.setattr(synth_cmd, "run", run)
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        root.handlers = [logging.StreamHandler()]  # as basicConfig leaves it, on this stderr
        root.setLevel(logging.INFO)
        assert main(["synth", "--out", "unused"]) == 0
    finally:
        root.handlers, root.level = before[0], before[1]
    err = capsys.readouterr().err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if "done" in line]
    assert len(lines) == 3 and all(line.startswith("step ") for line in lines), err
