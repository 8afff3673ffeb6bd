"""The one declared Parquet schema for predictions, and the only way rows get into it.

Every writer (CLI, flows, evaluation) builds its table with :func:`records_to_table`, so
a typo'd key, a float where an int belongs, or a missing column fails loudly at the
writer instead of producing a file that downstream readers silently misread. Readers
call :func:`validate_table`. The pipeline may append metadata columns with
:func:`extend_schema`, but never rename or retype a declared one.

Field descriptions live in each field's metadata (``b"description"``), so they travel
inside every Parquet file and show up in any schema browser.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "PREDICTION_SCHEMA",
    "SCHEMA_VERSION",
    "extend_schema",
    "records_to_table",
    "validate_table",
]

SCHEMA_VERSION = "2"  # bump on any change to the declared fields below


def _field(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


_BBOX_TYPE = pa.struct(
    [pa.field(axis, pa.int32(), nullable=False) for axis in ("x", "y", "w", "h")]
)
_PROBABILITIES_TYPE = pa.map_(pa.string(), pa.field("value", pa.float32(), nullable=False))

PREDICTION_SCHEMA: pa.Schema = pa.schema(
    [
        _field("image_uri", pa.string(), "Where the image was read from.", nullable=False),
        _field("image_sha256", pa.string(), "SHA-256 hex of the image bytes; null if unread."),
        _field("predicted_class", pa.string(), "Most probable defect class; null on error."),
        _field("probabilities", _PROBABILITIES_TYPE, "Class name -> probability; null on error."),
        _field("anomaly_score", pa.float32(), "Image-level anomaly score; null on error."),
        _field("needs_review", pa.bool_(), "True when a human should check; null on error."),
        _field(
            "mask_rle",
            pa.string(),
            "COCO compressed RLE counts of the defect mask (column-major, size = "
            "[mask_height, mask_width]); null when no pixel is a defect or on error.",
        ),
        _field("mask_height", pa.int32(), "Mask rows in pixels (the RLE size[0]); null on error."),
        _field(
            "mask_width", pa.int32(), "Mask columns in pixels (the RLE size[1]); null on error."
        ),
        _field("n_regions", pa.int32(), "8-connected defect regions in the mask; null on error."),
        _field("defect_area_px", pa.int64(), "Defect pixels in the mask; null on error."),
        _field(
            "defect_area_nm2",
            pa.float64(),
            "Defect area in square nanometres; null when the pixel size is unknown or on error.",
        ),
        _field(
            "pixel_size_nm",
            pa.float64(),
            "Nanometres per pixel used for defect_area_nm2; null when unknown or on error.",
        ),
        _field(
            "pixel_size_source",
            pa.string(),
            "Where pixel_size_nm came from: tiff, png or jpeg (the file's own metadata) or "
            "setting (SEMCLIP_PIXEL_SIZE_NM / --pixel-size-nm); null when unknown.",
        ),
        _field(
            "bbox",
            _BBOX_TYPE,
            "Box (x=column, y=row, w, h, pixels) around all defect pixels; null when none.",
        ),
        _field("model_name", pa.string(), "Name of the model that predicted.", nullable=False),
        _field("model_version", pa.string(), "Version of that model.", nullable=False),
        _field("error", pa.string(), "Why the image could not be predicted; null on success."),
    ],
    metadata={"semclip.schema": "prediction", "semclip.schema_version": SCHEMA_VERSION},
)

_INT_RANGES = {
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


def records_to_table(
    records: Iterable[Mapping[str, Any]], *, schema: pa.Schema = PREDICTION_SCHEMA
) -> pa.Table:
    """Build a table that conforms exactly to ``schema`` from one mapping per row.

    Every record must have exactly the schema's keys. Values are checked against the
    declared types before Arrow sees them, because Arrow coerces some mismatches silently
    (``True`` into an int column) and names neither field nor row when it does refuse.
    ``bbox`` may be a ``{"x", "y", "w", "h"}`` mapping or an ``(x, y, w, h)`` tuple as
    :class:`semclip.regions.RegionStats` gives it. Raises ``ValueError`` naming the row
    and field.
    """
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    expected = set(schema.names)
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {row}: expected a mapping, got {type(record).__name__}")
        _check_keys(row, record, expected)
        for field in schema:
            try:
                value = _normalise(record[field.name], field)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"record {row}: field {field.name!r}: {exc}") from None
            columns[field.name].append(value)
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def validate_table(table: pa.Table, *, schema: pa.Schema = PREDICTION_SCHEMA) -> None:
    """Raise ``ValueError`` unless ``table`` has exactly ``schema``'s columns, types and nulls.

    Field metadata is not compared, so a table read back from Parquet by another tool
    still validates; names, order, types and nullability are.
    """
    if table.schema.names != schema.names:
        missing = [n for n in schema.names if n not in table.schema.names]
        extra = [n for n in table.schema.names if n not in schema.names]
        raise ValueError(
            f"table columns do not match the schema: missing {missing}, unexpected {extra}"
            + ("" if missing or extra else ", or they are out of order")
        )
    for want, got in zip(schema, table.schema, strict=True):
        if not got.type.equals(want.type):
            raise ValueError(f"column {want.name!r} has type {got.type}, expected {want.type}")
        if got.nullable != want.nullable:
            raise ValueError(
                f"column {want.name!r} nullable={got.nullable}, expected {want.nullable}"
            )
        if not want.nullable and table.column(want.name).null_count:
            raise ValueError(f"column {want.name!r} is declared not null but has nulls")


def extend_schema(base: pa.Schema, extra: Sequence[pa.Field]) -> pa.Schema:
    """Append metadata columns to ``base``, keeping its fields and metadata as they are.

    Raises ``ValueError`` if an extra field reuses a name, because replacing a declared
    column would let a writer change its meaning while readers trust the declaration.
    """
    names = set(base.names)
    for field in extra:
        if not isinstance(field, pa.Field):
            raise ValueError(f"extra columns must be pyarrow.Field, got {type(field).__name__}")
        if field.name in names:
            raise ValueError(
                f"column {field.name!r} already exists; extra columns are appended under "
                "new names and never replace or rename a declared one"
            )
        names.add(field.name)
    return pa.schema([*base, *extra], metadata=base.metadata)


def _check_keys(row: int, record: Mapping[str, Any], expected: set[str]) -> None:
    keys = set(record)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(map(str, keys - expected))
        raise ValueError(f"record {row}: missing field(s) {missing}, unexpected field(s) {extra}")


def _normalise(value: Any, field: pa.Field) -> Any:
    """Check ``value`` against ``field`` and return it as the plain Python value Arrow takes."""
    if value is None:
        if not field.nullable:
            raise ValueError("is declared not null but got None")
        return None
    t = field.type
    if pa.types.is_string(t):
        return _expect(value, str, "a str")
    if pa.types.is_boolean(t):
        return bool(_expect(value, bool | np.bool_, "a bool"))
    if pa.types.is_integer(t):
        return _as_int(value, t)
    if pa.types.is_floating(t):
        return _as_float(value)
    if pa.types.is_map(t):
        return _as_map(value, t)
    if pa.types.is_struct(t):
        return _as_struct(value, t)
    if pa.types.is_timestamp(t):
        return _as_utc(value)
    raise TypeError(f"no conversion for Arrow type {t}")


def _as_utc(value: Any) -> dt.datetime:
    """Timezone-aware datetimes only: a naive one is ambiguous across fab sites."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise TypeError(f"expected a timezone-aware datetime, got {value!r:.60}")
    return value.astimezone(dt.UTC)


def _expect(value: Any, kind: type | Any, what: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"expected {what}, got {type(value).__name__} {value!r:.60}")
    return value


def _as_int(value: Any, t: pa.DataType) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"expected an integer for {t}, got {type(value).__name__} {value!r:.60}")
    lo, hi = _INT_RANGES[t]
    if not lo <= int(value) <= hi:
        raise ValueError(f"{int(value)} is out of range for {t}")
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def _as_map(value: Any, t: pa.MapType) -> list[tuple[Any, Any]]:
    mapping = _expect(value, Mapping, "a mapping")
    return [(_normalise(k, t.key_field), _normalise(v, t.item_field)) for k, v in mapping.items()]


def _as_struct(value: Any, t: pa.StructType) -> dict[str, Any]:
    names = [t.field(i).name for i in range(t.num_fields)]
    if isinstance(value, Mapping):
        if set(value) != set(names):
            raise ValueError(f"expected keys {names}, got {sorted(map(str, value))}")
        items = [value[n] for n in names]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == len(names):
        items = list(value)
    else:
        raise TypeError(f"expected a mapping with keys {names} or a {len(names)}-tuple")
    return {n: _normalise(v, t.field(n)) for n, v in zip(names, items, strict=True)}
