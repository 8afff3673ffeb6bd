"""The prediction Parquet schema: declared fields, strict row building, Parquet round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semclip import rle
from semclip.io.schema import (
    PREDICTION_SCHEMA,
    extend_schema,
    records_to_table,
    validate_table,
)
from semclip.regions import region_stats

EXPECTED_FIELDS = [
    ("image_uri", pa.string(), False),
    ("image_sha256", pa.string(), True),
    ("predicted_class", pa.string(), True),
    ("probabilities", pa.map_(pa.string(), pa.field("value", pa.float32(), False)), True),
    ("anomaly_score", pa.float32(), True),
    ("needs_review", pa.bool_(), True),
    ("mask_rle", pa.string(), True),
    ("mask_height", pa.int32(), True),
    ("mask_width", pa.int32(), True),
    ("n_regions", pa.int32(), True),
    ("defect_area_px", pa.int64(), True),
    ("defect_area_nm2", pa.float64(), True),
    ("pixel_size_nm", pa.float64(), True),
    ("pixel_size_source", pa.string(), True),
    (
        "bbox",
        pa.struct([pa.field(a, pa.int32(), nullable=False) for a in ("x", "y", "w", "h")]),
        True,
    ),
    ("model_name", pa.string(), False),
    ("model_version", pa.string(), False),
    ("error", pa.string(), True),
]


def _ok_record(mask: np.ndarray | None = None) -> dict[str, Any]:
    mask = np.zeros((6, 8), bool) if mask is None else mask
    stats = region_stats(mask)
    return {
        "image_uri": "s3://fab/lot1/w01.tif",
        "image_sha256": "ab" * 32,
        "predicted_class": "particle",
        "probabilities": {"particle": 0.75, "scratch": 0.25},
        "anomaly_score": np.float32(0.5),
        "needs_review": False,
        "mask_rle": rle.encode(mask)["counts"] if stats.area_px else None,
        "mask_height": mask.shape[0],
        "mask_width": mask.shape[1],
        "n_regions": np.int64(stats.n_regions),  # numpy scalars are accepted
        "defect_area_px": stats.area_px,
        "defect_area_nm2": stats.area_px * 4.0,
        "pixel_size_nm": 2.0,
        "pixel_size_source": "tiff",
        "bbox": stats.bbox,  # the (x, y, w, h) tuple from RegionStats
        "model_name": "semclip-vitb16",
        "model_version": "3",
        "error": None,
    }


def _error_record() -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(PREDICTION_SCHEMA.names)
    record.update(
        image_uri="s3://fab/lot1/broken.tif",
        model_name="semclip-vitb16",
        model_version="3",
        error="OSError: truncated TIFF",
    )
    return record


def test_schema_declares_exact_fields_in_order() -> None:
    got = [(f.name, f.type, f.nullable) for f in PREDICTION_SCHEMA]
    assert [g[0] for g in got] == [e[0] for e in EXPECTED_FIELDS]
    for (name, type_, nullable), (_, want_type, want_nullable) in zip(
        got, EXPECTED_FIELDS, strict=True
    ):
        assert type_.equals(want_type), name
        assert nullable is want_nullable, name


def test_every_field_is_described() -> None:
    for field in PREDICTION_SCHEMA:
        description = (field.metadata or {}).get(b"description", b"")
        assert len(description) > 10, field.name
    assert PREDICTION_SCHEMA.metadata[b"semclip.schema"] == b"prediction"


def test_parquet_round_trip_with_map_struct_and_nulls(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:4] = True
    mask[5, 7] = True
    table = records_to_table([_ok_record(mask), _error_record(), _ok_record()])
    path = tmp_path / "predictions.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)

    validate_table(back)
    # Parquet renames the map's inner "entries" field, so compare without metadata, then
    # check that the descriptions and the schema tag did survive.
    assert back.schema.equals(PREDICTION_SCHEMA)
    assert back.schema.metadata == PREDICTION_SCHEMA.metadata
    for field in PREDICTION_SCHEMA:
        assert back.schema.field(field.name).metadata == field.metadata, field.name
    ok, err, empty = back.to_pylist()
    assert ok["probabilities"] == [("particle", 0.75), ("scratch", 0.25)]
    assert ok["bbox"] == {"x": 2, "y": 1, "w": 6, "h": 5}
    assert (ok["n_regions"], ok["defect_area_px"], ok["defect_area_nm2"]) == (2, 5, 20.0)
    assert (ok["pixel_size_nm"], ok["pixel_size_source"]) == (2.0, "tiff")
    assert ok["anomaly_score"] == 0.5
    size = [ok["mask_height"], ok["mask_width"]]
    np.testing.assert_array_equal(rle.decode({"size": size, "counts": ok["mask_rle"]}), mask)
    assert err["error"] == "OSError: truncated TIFF"
    assert all(err[k] is None for k in ("image_sha256", "probabilities", "bbox", "mask_height"))
    assert (empty["mask_rle"], empty["bbox"], empty["n_regions"]) == (None, None, 0)


def test_empty_records_give_empty_conforming_table() -> None:
    table = records_to_table([])
    assert table.num_rows == 0
    validate_table(table)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_regions": "3"}, r"record 1: field 'n_regions': expected an integer"),
        ({"n_regions": True}, r"field 'n_regions': expected an integer"),
        ({"defect_area_px": 2.0}, r"field 'defect_area_px': expected an integer"),
        ({"mask_height": 2**31}, r"field 'mask_height': 2147483648 is out of range"),
        ({"anomaly_score": "high"}, r"field 'anomaly_score': expected a number"),
        ({"needs_review": 1}, r"field 'needs_review': expected a bool"),
        ({"image_uri": None}, r"field 'image_uri': is declared not null"),
        ({"model_version": 3}, r"field 'model_version': expected a str"),
        ({"probabilities": [("a", 1.0)]}, r"field 'probabilities': expected a mapping"),
        ({"probabilities": {1: 0.5}}, r"field 'probabilities': expected a str"),
        ({"probabilities": {"a": None}}, r"field 'probabilities': is declared not null"),
        ({"bbox": {"x": 1, "y": 2, "w": 3}}, r"field 'bbox': expected keys"),
        ({"bbox": (1, 2, 3)}, r"field 'bbox': expected a mapping"),
        ({"bbox": (1, 2, 3.5, 4)}, r"field 'bbox': expected an integer"),
    ],
)
def test_wrong_types_name_row_and_field(change: dict[str, Any], message: str) -> None:
    bad = _ok_record() | change
    with pytest.raises(ValueError, match=message):
        records_to_table([_ok_record(), bad])


def test_missing_and_extra_keys_are_named() -> None:
    missing = _ok_record()
    del missing["error"]
    with pytest.raises(ValueError, match=r"record 0: missing field\(s\) \['error'\]"):
        records_to_table([missing])
    extra = _ok_record() | {"lot_id": "L1"}
    with pytest.raises(ValueError, match=r"record 2: .*unexpected field\(s\) \['lot_id'\]"):
        records_to_table([_ok_record(), _error_record(), extra])
    with pytest.raises(ValueError, match="record 0: expected a mapping"):
        records_to_table([["not", "a", "mapping"]])  # type: ignore[list-item]


def test_validate_table_rejects_drift() -> None:
    table = records_to_table([_ok_record()])
    with pytest.raises(ValueError, match=r"missing \['error'\]"):
        validate_table(table.drop_columns(["error"]))
    reordered = table.select(list(reversed(table.column_names)))
    with pytest.raises(ValueError, match="out of order"):
        validate_table(reordered)
    idx = table.schema.get_field_index("n_regions")
    retyped = table.set_column(idx, "n_regions", table.column(idx).cast(pa.int64()))
    with pytest.raises(ValueError, match="'n_regions' has type int64, expected int32"):
        validate_table(retyped)
    loose = pa.schema([f.with_nullable(True) for f in PREDICTION_SCHEMA])
    with pytest.raises(ValueError, match="'image_uri' nullable=True"):
        validate_table(table.cast(loose))


def test_extend_schema_appends_and_keeps_declaration() -> None:
    extra = [pa.field("lot_id", pa.string()), pa.field("tool_id", pa.string())]
    schema = extend_schema(PREDICTION_SCHEMA, extra)
    assert schema.names == [*PREDICTION_SCHEMA.names, "lot_id", "tool_id"]
    assert schema.metadata == PREDICTION_SCHEMA.metadata
    assert schema.field("bbox").metadata == PREDICTION_SCHEMA.field("bbox").metadata
    table = records_to_table([_ok_record() | {"lot_id": "L1", "tool_id": None}], schema=schema)
    validate_table(table, schema=schema)
    with pytest.raises(ValueError, match="unexpected"):
        validate_table(table)  # the plain schema does not know the extra columns


@pytest.mark.parametrize(
    "extra",
    [
        [pa.field("predicted_class", pa.string())],  # same name, same type: still a replace
        [pa.field("n_regions", pa.int64())],
        [pa.field("lot_id", pa.string()), pa.field("lot_id", pa.int32())],
    ],
)
def test_extend_schema_rejects_clashes(extra: list[pa.Field]) -> None:
    with pytest.raises(ValueError, match="already exists"):
        extend_schema(PREDICTION_SCHEMA, extra)
