"""The columns the nightly pipeline adds to the declared prediction schema, and its tables.

The model library owns :data:`~semclip.io.schema.PREDICTION_SCHEMA`; the pipeline only
appends lineage columns (where on the wafer the defect is, which flow run wrote the row,
when) through :func:`~semclip.io.schema.extend_schema`, so a reader of the model's columns
never has to know about the pipeline. The hive key ``date`` is not stored in the files: it is
the partition folder name (``predictions/date=YYYY-MM-DD/``), declared here so every reader
gives it the same type.

:func:`pipeline_records_to_table` exists because :func:`~semclip.io.schema.records_to_table`
has no conversion for timestamps; it checks the model columns there and the pipeline columns
here, with the same "name the row and field" errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from semclip.io.schema import PREDICTION_SCHEMA, extend_schema, records_to_table

__all__ = [
    "KLARF_FIELDS",
    "PARTITION_FIELD",
    "PIPELINE_FIELDS",
    "PIPELINE_PREDICTION_SCHEMA",
    "QUARANTINE_SCHEMA",
    "pipeline_records_to_table",
    "quarantine_records_to_table",
]

_UTC_US = pa.timestamp("us", tz="UTC")


def _field(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


# The KLARF's own fields for the defect an image shows (null without a matched KLARF). Added
# after the first layout: partitions written before read them as null (every reader imposes
# the declared schema, or fills missing columns with nulls in DuckDB: semclip.io.query).
KLARF_FIELDS: tuple[pa.Field, ...] = (
    _field("klarf_defect_id", pa.int64(), "KLARF DEFECTID of the matched defect; or null."),
    _field(
        "klarf_classnumber",
        pa.int32(),
        "KLARF CLASSNUMBER: the inspection tool's own class code; null if none or unmatched.",
    ),
    _field("klarf_step", pa.string(), "KLARF StepID: the process step inspected; or null."),
    _field(
        "klarf_tool",
        pa.string(),
        "KLARF InspectionStationID (manufacturer, model, id joined by spaces); or null.",
    ),
    _field("die_pitch_x_um", pa.float64(), "KLARF DiePitch x: die step in µm; or null."),
    _field("die_pitch_y_um", pa.float64(), "KLARF DiePitch y: die step in µm; or null."),
)

PIPELINE_FIELDS: tuple[pa.Field, ...] = (
    _field("lot_id", pa.string(), "Lot id from the path regex or a KLARF; null if unknown."),
    _field("wafer_id", pa.string(), "Wafer id from the path regex or a KLARF; null if unknown."),
    _field("defect_id", pa.string(), "Defect id from the path regex or a KLARF; null if unknown."),
    _field("die_x_index", pa.int32(), "Die column index (KLARF XINDEX); null if unknown."),
    _field("die_y_index", pa.int32(), "Die row index (KLARF YINDEX); null if unknown."),
    _field("x_rel_um", pa.float64(), "Defect x in its die, micrometres (KLARF XREL); or null."),
    _field("y_rel_um", pa.float64(), "Defect y in its die, micrometres (KLARF YREL); or null."),
    _field("flow_run_id", pa.string(), "Id of the flow run that wrote the row; null outside one."),
    _field("inferred_at", _UTC_US, "When the prediction was made (UTC)."),
    *KLARF_FIELDS,
)

PIPELINE_PREDICTION_SCHEMA: pa.Schema = extend_schema(PREDICTION_SCHEMA, PIPELINE_FIELDS)

PARTITION_FIELD: pa.Field = _field(
    "date", pa.date32(), "Hive partition key: the raw/<YYYY-MM-DD>/ folder the images came from."
)

QUARANTINE_SCHEMA: pa.Schema = pa.schema(
    [
        _field("image_uri", pa.string(), "The input that could not be used.", nullable=False),
        _field("reason", pa.string(), "Why, in words an engineer can act on.", nullable=False),
        _field("flow_run_id", pa.string(), "Id of the flow run that met it; null outside one."),
        _field("quarantined_at", _UTC_US, "When it was quarantined (UTC).", nullable=False),
    ],
    metadata={"semclip.schema": "quarantine", "semclip.schema_version": "1"},
)


def pipeline_records_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a :data:`PIPELINE_PREDICTION_SCHEMA` table from one mapping per row.

    Each record needs exactly the schema's keys (``inferred_at`` a timezone-aware
    ``datetime``), except the :data:`KLARF_FIELDS`, which default to null: most images have
    no KLARF, and writers that predate those columns stay valid. Raises ``ValueError``
    naming the row and field.
    """
    klarf_nulls = dict.fromkeys(f.name for f in KLARF_FIELDS)
    return records_to_table(
        ({**klarf_nulls, **record} for record in records), schema=PIPELINE_PREDICTION_SCHEMA
    )


def quarantine_records_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a :data:`QUARANTINE_SCHEMA` table; ``quarantined_at`` defaults to now (UTC)."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for row, record in enumerate(records):
        unknown = set(record) - set(QUARANTINE_SCHEMA.names)
        if unknown:
            raise ValueError(f"quarantine record {row}: unexpected field(s) {sorted(unknown)}")
        rows.append({"quarantined_at": now, "flow_run_id": None, **record})
    return records_to_table(rows, schema=QUARANTINE_SCHEMA)
