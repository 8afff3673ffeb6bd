"""Records are strict JSON: what jq or a browser reads, never Python's NaN / Infinity tokens."""

from __future__ import annotations

import json
import math

import pytest

from semclip import strict_json


def _strict_loads(text: str) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_at_any_depth() -> None:
    record = {
        "loss": math.nan,
        "history": [{"step": 1, "entropy": float("inf")}, {"step": 2, "entropy": 0.5}],
        "pair": (-math.inf, 1.0),
        "name": "nan",  # a string stays a string
        "count": 3,
        "flag": True,
    }
    parsed = _strict_loads(strict_json.dumps(record))
    assert parsed == {
        "loss": None,
        "history": [{"step": 1, "entropy": None}, {"step": 2, "entropy": 0.5}],
        "pair": [None, 1.0],
        "name": "nan",
        "count": 3,
        "flag": True,
    }
    assert json.loads(json.dumps(record))["loss"] != json.loads(json.dumps(record))["loss"]


def test_what_cannot_be_written_strictly_is_refused_not_mangled() -> None:
    with pytest.raises(TypeError):
        strict_json.dumps({"tensor": object()})
    assert strict_json.dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'
