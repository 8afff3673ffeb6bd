"""KLARF fields kept in the rows, and the write-back of a date to klarf_out/<date>/."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from conftest_storage import BucketCase

from semclip.io.klarf import KlarfError, parse_klarf
from semclip.io.klarf_export import (
    UnknownClassCodeError,
    export_date,
    load_class_codes,
    parse_class_codes,
)
from semclip.io.klarf_join import describe_images
from semclip.io.partitions import write_partition
from semclip.io.pipeline_schema import PIPELINE_PREDICTION_SCHEMA, pipeline_records_to_table
from semclip.settings import DEFAULT_PATH_REGEX

pytest_plugins = ["conftest_storage"]

DAY = dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)
KLARF = """FileVersion 1 2;
LotID "LOT7";
StepID "M1_CMP";
InspectionStationID "KLA" "2367" "TOOL01";
DiePitch 5000.0 4000.0;
WaferID "W03";
DefectRecordSpec 7 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER IMAGECOUNT;
DefectList
 1 1250.5 100.0 3 -2 17 1
 2 10.0 20.0 4 5 0 1
 3 7 8 1 1 5 1;
EndOfFile;
"""


def _seed(case: BucketCase, classes: dict[int, str]) -> list[str]:
    """Three images D0001-3 beside the KLARF, and current rows for those in ``classes``."""
    folder = f"{case.root}/raw/{DAY}/LOT7/W03"
    case.fs.pipe_file(f"{folder}/W03.klarf", KLARF.encode())
    uris = []
    for i in (1, 2, 3):
        case.fs.pipe_file(f"{folder}/D{i:04d}.png", b"png")
        uris.append(case.fs.unstrip_protocol(f"{folder}/D{i:04d}.png"))
    rows = []
    for i, cls in classes.items():
        row: dict[str, Any] = dict.fromkeys(PIPELINE_PREDICTION_SCHEMA.names)
        row.update(image_uri=uris[i - 1], image_sha256=f"h{i}", predicted_class=cls)
        row.update(model_name="semclip-sem", model_version="1", inferred_at=NOW)
        rows.append(row)
    if rows:
        write_partition(case.fs, case.root, DAY, pipeline_records_to_table(rows))
    case.fs.invalidate_cache()
    return uris


def test_the_join_keeps_the_klarfs_own_fields(bucket: BucketCase) -> None:
    uris = _seed(bucket, {})
    fields = describe_images(bucket.fs, bucket.root, DAY, uris, DEFAULT_PATH_REGEX).fields
    first = fields[uris[0]]
    assert first["defect_id"] == "D0001"  # the path's id stays
    assert (first["klarf_defect_id"], first["klarf_classnumber"]) == (1, 17)
    assert (first["klarf_step"], first["klarf_tool"]) == ("M1_CMP", "KLA 2367 TOOL01")
    assert (first["die_pitch_x_um"], first["die_pitch_y_um"]) == (5000.0, 4000.0)
    assert fields[uris[2]]["klarf_classnumber"] == 5
    assert set(first) <= set(PIPELINE_PREDICTION_SCHEMA.names)


def test_export_rewrites_only_the_class_column(bucket: BucketCase) -> None:
    _seed(bucket, {1: "particle", 2: "bridge", 3: "unknown_thing"})
    codes = {"particle": 1, "bridge": 3}
    result = export_date(bucket.fs, bucket.root, DAY, codes, path_regex=DEFAULT_PATH_REGEX)
    assert result.defects_coded == 2
    assert result.unmapped == {"unknown_thing": 1}
    assert result.errors == []
    (uri,) = result.written
    assert uri.endswith(f"klarf_out/{DAY}/LOT7/W03/W03.klarf")
    text = bucket.fs.cat_file(bucket.fs._strip_protocol(uri)).decode()
    before, after = parse_klarf(KLARF), parse_klarf(text)
    assert [d.classnumber for d in after.defects] == [1, 3, 5]  # defect 3: the tool's code kept
    for old, new in zip(before.defects, after.defects, strict=True):
        assert dataclasses.replace(new, classnumber=old.classnumber) == old
    assert dataclasses.replace(after, defects=[], source="") == dataclasses.replace(
        before, defects=[], source=""
    )
    assert text == KLARF.replace(" 3 -2 17 1", " 3 -2 1 1").replace(" 4 5 0 1", " 4 5 3 1")
    assert bucket.fs.find(f"{bucket.root}/_staging/{'klarf_out'}") == []


def test_strict_export_names_the_classes_without_a_code(bucket: BucketCase) -> None:
    _seed(bucket, {1: "particle", 2: "mystery"})
    with pytest.raises(UnknownClassCodeError, match=r"\['mystery'\].*SEMCLIP_CLASS_CODES"):
        export_date(
            bucket.fs, bucket.root, DAY, {"particle": 1}, path_regex=DEFAULT_PATH_REGEX, strict=True
        )
    assert not bucket.fs.exists(f"{bucket.root}/klarf_out")


def test_a_klarf_without_class_column_is_named_and_the_others_exported(
    bucket: BucketCase,
) -> None:
    _seed(bucket, {1: "particle"})
    other = f"{bucket.root}/raw/{DAY}/LOT8/W01"
    bucket.fs.pipe_file(
        f"{other}/W01.klarf",
        b'LotID "LOT8";\nDefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;\n'
        b"DefectList\n 1 1 1 1 1;\nEndOfFile;\n",
    )
    result = export_date(
        bucket.fs, bucket.root, DAY, {"particle": 1}, path_regex=DEFAULT_PATH_REGEX
    )
    assert len(result.written) == 1 and result.defects_coded == 1
    (error,) = result.errors
    assert "LOT8/W01/W01.klarf" in error and "no CLASSNUMBER column" in error


def test_class_codes_from_prompt_file_and_setting() -> None:
    codes = load_class_codes(setting="particle=11, newclass=42")
    assert codes["particle"] == 11 and codes["newclass"] == 42 and codes["bridge"] == 3
    assert parse_class_codes('{"a": 1, "b": "2"}') == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="'particle' is not class=code"):
        parse_class_codes("particle")
    with pytest.raises(ValueError, match="code 'x' of class 'a' is not an integer"):
        parse_class_codes("a=x")


def test_die_pitch_is_parsed_and_checked() -> None:
    assert parse_klarf(KLARF).die_pitch_um == (5000.0, 4000.0)
    with pytest.raises(KlarfError, match="DiePitch needs 2 values"):
        parse_klarf(KLARF.replace("DiePitch 5000.0 4000.0", "DiePitch 5000.0"))
    assert parse_klarf(KLARF, um_per_unit=1e-3).die_pitch_um == (5.0, 4.0)
