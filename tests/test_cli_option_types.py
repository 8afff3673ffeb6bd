"""Numeric options are checked by the parser: a nonsense value (a negative pixel size, a NaN,
page -1, batch -3) is refused before any model loads, naming the option, never written into
the rows or turned into an error row per image."""

from __future__ import annotations

import argparse

import pytest

from semclip.cli import main
from semclip.cli.option_types import (
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
    version_number,
)


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (positive_int, {"1": 1, "16": 16}, ["0", "-3", "1.5", "x", ""]),
        (non_negative_int, {"0": 0, "2": 2}, ["-1", "nan", "one"]),
        (positive_float, {"0.5": 0.5, "2e1": 20.0}, ["0", "-5", "nan", "inf", "-inf", "x"]),
        (unit_fraction, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["-0.1", "1.01", "nan", "x"]),
    ],
)
def test_option_types(kind, good: dict[str, object], bad: list[str]) -> None:  # noqa: ANN001
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="is not"):
            kind(text)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--pixel-size-nm", "-5"),
        ("--pixel-size-nm", "nan"),
        ("--tiff-page", "-1"),
        ("--max-image-pixels", "-1"),
        ("--batch-size", "-3"),
    ],
)
def test_predict_refuses_nonsense_numbers_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "--model", "no-such-model", "--out", "p.parquet", option, value, "x.png"])
    assert info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["report", "--date", "2026-11-01"], "--nights", "0"),
        (["report", "--date", "2026-11-01"], "--review-margin", "2"),
        (["eval", "--data", "d", "--out", "o"], "--seeds", "0"),
        (["eval-al", "--data", "d", "--out", "o"], "--test-fraction", "1.5"),
        (["eval-al", "--data", "d", "--out", "o"], "--budget", "0"),
    ],
)
def test_other_commands_refuse_them_too(
    command: list[str], option: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, option, value])
    assert info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_promote_takes_a_version_number_not_an_alias(capsys: pytest.CaptureFixture) -> None:
    assert version_number("3") == version_number("v3") == version_number(" 03 ") == "3"
    for text in ("abc", "champion", "0", "-2", "3.1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a version number"):
            version_number(text)
    with pytest.raises(SystemExit) as info:
        main(["promote", "--version", "abc"])
    assert info.value.code == 2 and "argument --version" in capsys.readouterr().err
