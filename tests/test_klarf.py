"""KLARF 1.2 reader: hand-written files as tools write them, and malformed ones."""

from __future__ import annotations

import pytest

from semclip.io.klarf import Klarf, KlarfDefect, KlarfError, parse_klarf

# A full-header file in the common 17-column layout; IMAGELIST = count, then (number, type).
STANDARD = """\
FileVersion 1 2;
FileTimestamp 11-01-26 02:13:44;
InspectionStationID "KLA-TENCOR" "eDR7380" "T01";
SampleType WAFER;
ResultTimestamp 11-01-26 02:10:00;
LotID "LOT42";
SampleSize 1 300;
DeviceID "DEV-A";
SetupID "REVIEW" 11-01-26 01:00:00;
StepID "M1_CMP";
SampleOrientationMarkType NOTCH;
OrientationMarkLocation DOWN;
DiePitch 1.0000000000e+04 1.2000000000e+04;
DieOrigin 0.0 0.0;
WaferID "W07";
Slot 7;
SampleCenterLocation 1.5e+05 1.5e+05;
ClassLookup 2
 0 "UNCLASSIFIED"
 17 "PARTICLE";
InspectionTest 1;
SampleTestPlan 2
 0 0
 1 -1;
AreaPerTest 7.0e+10;
TiffSpec 6.0 G R;
TiffFileName W07.tif;
DefectRecordSpec 17 DEFECTID XREL YREL XINDEX YINDEX XSIZE YSIZE DEFECTAREA DSIZE CLASSNUMBER \
TEST CLUSTERNUMBER ROUGHBINNUMBER FINEBINNUMBER REVIEWSAMPLE IMAGECOUNT IMAGELIST;
DefectList
 1 1.2345000000e+03 6.7890000000e+02 0 0 1.5 1.5 2.25 1.5 17 1 0 0 0 1 1 1 1 0
 2 5.0e+03 -2.5e+01 1 -1 0.8 0.8 0.64 0.8 0 1 0 0 0 1 2 2 2 0 3 1
 3 9.9e+03 1.1e+04 -2 3 0.5 0.5 0.25 0.5 0 1 0 0 0 0 0 0;
SummarySpec 5
TESTNO NDEFECT DEFDENSITY NDIE NDEFDIE;
SummaryList
 1 3 4.3e-08 600 3;
EndOfFile;
"""


def test_standard_file() -> None:
    k = parse_klarf(STANDARD, source="W07.klarf")
    assert isinstance(k, Klarf)
    assert (k.source, k.lot_id, k.wafer_id) == ("W07.klarf", "LOT42", "W07")
    assert [d.defect_id for d in k.defects] == [1, 2, 3]
    first, second, third = k.defects
    assert first == KlarfDefect(
        defect_id=1,
        x_rel_um=1234.5,
        y_rel_um=678.9,
        xindex=0,
        yindex=0,
        classnumber=17,
        image_files=("W07.tif",),
        image_numbers=(1,),
        wafer_id="W07",
        line=30,
    )
    assert (second.x_rel_um, second.y_rel_um, second.xindex, second.yindex) == (
        5000.0,
        -25.0,
        1,
        -1,
    )
    assert second.image_numbers == (2, 3)  # two detector pages of the wafer's TIFF
    assert third.image_files == () and third.image_numbers == ()  # IMAGECOUNT 0: no image


def test_columns_are_mapped_by_name_and_rows_may_wrap() -> None:
    text = """\
LotID L1;
WaferID "W 01";
DefectRecordSpec 6 YINDEX XINDEX IMAGECOUNT YREL DEFECTID XREL;
DefectList
 4 -3 0 250.5
   12 100.25
 5 6 0 1 13 2;
"""
    k = parse_klarf(text)
    assert k.wafer_id == "W 01"  # quoted values keep their spaces
    d12, d13 = k.defects
    assert (d12.defect_id, d12.x_rel_um, d12.y_rel_um, d12.xindex, d12.yindex) == (
        12,
        100.25,
        250.5,
        -3,
        4,
    )
    assert d12.line == 5 and d13.line == 7
    assert d12.classnumber is None  # no CLASSNUMBER column


def test_long_image_list_wraps_over_lines_and_tiff_may_follow_the_list() -> None:
    text = """\
LotID "LOT9";
WaferID "W1";
DefectRecordSpec 7 DEFECTID XREL YREL XINDEX YINDEX IMAGECOUNT IMAGELIST ;
DefectList 1 10 20 0 0 3 3
  10 0
  9 0
  8 1
 2 30 40 1 1 1 1 1 0;
TiffFileName W1_review.tif;
EndOfFile;
"""
    k = parse_klarf(text)
    assert k.defects[0].image_numbers == (10, 9, 8)
    assert k.defects[1].image_numbers == (1,)
    assert all(d.image_files == ("W1_review.tif",) for d in k.defects)


def test_image_count_with_empty_list_still_points_at_the_file() -> None:
    """Some tools write one JPEG per defect: IMAGECOUNT 1, an empty IMAGELIST, the file name."""
    text = """\
LotID "L";
WaferID "W";
DefectRecordSpec 7 DEFECTID XREL YREL XINDEX YINDEX IMAGECOUNT IMAGELIST;
DefectList 327 3.49e+03 3.29e+03 57 12 1 0;
TiffFileName TR7_256993787_1.jpg;
"""
    (d,) = parse_klarf(text).defects
    assert d.image_files == ("TR7_256993787_1.jpg",) and d.image_numbers == ()


def test_several_wafers_keep_their_own_ids_and_files() -> None:
    text = """\
LotID "LOT5";
DefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;
WaferID "W01";
TiffFileName W01.tif;
DefectList 1 1 1 0 0;
WaferID "W02";
TiffFileName W02.tif;
DefectList 1 2 2 0 0
 2 3 3 1 1;
"""
    k = parse_klarf(text)
    assert k.wafer_id is None  # ambiguous at file level
    assert [(d.wafer_id, d.defect_id, d.image_files) for d in k.defects] == [
        ("W01", 1, ("W01.tif",)),
        ("W02", 1, ("W02.tif",)),
        ("W02", 2, ("W02.tif",)),
    ]


def test_empty_defect_list_and_unit_scaling() -> None:
    empty = (
        "LotID L;\nWaferID W;\nDefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;\nDefectList;\n"
    )
    assert parse_klarf(empty).defects == []
    nm = "DefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;\nDefectList 1 1500 250 2 3;\n"
    (d,) = parse_klarf(nm, um_per_unit=1e-3).defects
    assert (d.x_rel_um, d.y_rel_um) == pytest.approx((1.5, 0.25))
    assert parse_klarf(nm).lot_id is None


def test_integers_written_as_floats_are_accepted() -> None:
    text = (
        "DefectRecordSpec 5 DEFECTID XREL YREL XINDEX YINDEX;\nDefectList 1.0 1 1 2.0e+00 -3.0;\n"
    )
    (d,) = parse_klarf(text).defects
    assert (d.defect_id, d.xindex, d.yindex) == (1, 2, -3)


_SPEC = "DefectRecordSpec 6 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER;\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("LotID L;\nWaferID W;\nEndOfFile;\n", None, "no DefectRecordSpec"),
        ("LotID L;\nDefectList 1 2 3 4 5 6;\n" + _SPEC, 2, "before any DefectRecordSpec"),
        (_SPEC + "DefectList\n 1 2 3 4 5 6\n 2 2 3 4 5;\n", 4, "fewer fields"),
        (_SPEC + "DefectList\n 1 2 3 4 5 6 7\n 2 2 3 4 5 6;\n", 3, "more fields"),
        (_SPEC + "DefectList\n 1 2 3 4 5 6\n 2 2 abc 4 5 6;\n", 4, "YREL 'abc'"),
        (_SPEC + "DefectList\n 1 2 3 4.5 5 6;\n", 3, "XINDEX '4.5' is not an integer"),
        (_SPEC + "DefectList\n 1 2 nan 4 5 6;\n", 3, "not a finite number"),
        (_SPEC + "DefectList\n 1 2 3 4 5 6\n 2 2 3 4 5 6\n", 2, "not terminated by ';'"),
        ('LotID "L1;\n' + _SPEC, 1, "unterminated quoted string"),
        ("DefectRecordSpec 6 DEFECTID XREL YREL XINDEX YINDEX;\n", 1, "says 6 columns but names 5"),
        ("DefectRecordSpec 4 DEFECTID XREL YREL XINDEX;\n", 1, "lacks column(s) ['YINDEX']"),
        ("DefectRecordSpec x DEFECTID;\n", 1, "column count 'x'"),
        (
            'Record FileRecord "1.8"\n{\n  Field FileTimestamp 2 {"01-17-24", "09:26:52"}\n}\n',
            1,
            "KLARF 1.8",
        ),
        (
            "DefectRecordSpec 6 DEFECTID XREL YREL XINDEX YINDEX IMAGELIST;\n"
            "DefectList\n 1 2 3 4 5 2 1 0;\n",
            3,
            "announces 2 image(s)",
        ),
        (
            "DefectRecordSpec 6 DEFECTID XREL YREL XINDEX YINDEX IMAGELIST;\n"
            "DefectList\n 1 2 3 4 5 -1;\n",
            3,
            "negative",
        ),
    ],
)
def test_malformed_files_name_file_and_line(text: str, line: int | None, message: str) -> None:
    with pytest.raises(KlarfError) as info:
        parse_klarf(text, source="raw/2026-11-01/bad.klarf")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.source == "raw/2026-11-01/bad.klarf" and err.line == line
    where = "raw/2026-11-01/bad.klarf" + (f":{line}" if line is not None else "")
    assert str(err).startswith(where + ": ")
    assert message in str(err)
