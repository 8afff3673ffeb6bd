"""JSON that every reader accepts: non-finite floats written as null, never as `NaN`.

Python's `json` writes `NaN` and `Infinity` by default, tokens outside the JSON standard that
jq, browsers and most non-Python readers reject. A record that a person or another tool reads
(a backbone's `pretrain.json`, an evaluation's metrics) goes through `dumps` here: a value
that is not a number (a diverged loss, an indicator that does not apply) becomes null, and
anything else that cannot be written strictly raises instead of writing a file no one can read.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float, at any depth of dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `value` after `finite_or_none`, refusing anything still non-standard."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)
