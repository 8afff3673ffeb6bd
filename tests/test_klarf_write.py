"""KLARF write-back: only CLASSNUMBER changes, and the parser reads the copy back."""

from __future__ import annotations

import dataclasses

import pytest

from semclip.io.klarf import KlarfError, parse_klarf
from semclip.io.klarf_write import rewrite_classnumbers

KLARF = """FileVersion 1 2;
LotID "LOT42";
WaferID "W07";
TiffFileName W07.tif;
DiePitch 5000.0 5000.0;
DefectRecordSpec 9 DEFECTID XREL YREL XINDEX YINDEX XSIZE CLASSNUMBER IMAGECOUNT IMAGELIST;
DefectList
 1 1234.5 678.9 3 -2 0.5 17 1 1 1 0
 2 10.0 20.0 4 5 1.25 0 2 2 2 0
   3 0
 3 7 8 1 1 0.1 5 0 0;
SummarySpec 2 TESTNO NDEFECT;
SummaryList
 1 3;
EndOfFile;
"""


def test_only_the_class_column_changes_and_it_parses_back() -> None:
    text, changed = rewrite_classnumbers(KLARF, {("W07", 1): 4, ("W07", 2): 123})
    assert changed == 2
    before, after = parse_klarf(KLARF), parse_klarf(text)
    assert [d.classnumber for d in after.defects] == [4, 123, 5]  # defect 3: the tool's class
    for old, new in zip(before.defects, after.defects, strict=True):
        assert dataclasses.replace(new, classnumber=old.classnumber) == old
    assert (after.lot_id, after.wafer_id) == (before.lot_id, before.wafer_id)
    # Byte for byte the same outside the edited fields.
    assert text.replace(" 4 1 1 1 0", " 17 1 1 1 0").replace(" 123 2 2 2 0", " 0 2 2 2 0") == KLARF


def test_sections_of_several_wafers_are_keyed_by_wafer() -> None:
    two = KLARF.replace("EndOfFile;", 'WaferID "W08";\nDefectList\n 1 1 1 1 1 1 9 0 0;\nEndOfFile;')
    text, changed = rewrite_classnumbers(two, {("W08", 1): 2})
    assert changed == 1
    codes = [(d.wafer_id, d.defect_id, d.classnumber) for d in parse_klarf(text).defects]
    assert codes == [("W07", 1, 17), ("W07", 2, 0), ("W07", 3, 5), ("W08", 1, 2)]


def test_a_klarf_without_a_class_column_is_refused() -> None:
    no_class = KLARF.replace(" CLASSNUMBER", "").replace("9 DEFECTID", "8 DEFECTID")
    no_class = no_class.replace(" 17 1 1 1 0", " 1 1 1 0").replace(" 0 2 2 2 0", " 2 2 2 0")
    no_class = no_class.replace(" 0.1 5 0 0", " 0.1 0 0")
    with pytest.raises(KlarfError, match="no CLASSNUMBER column"):
        rewrite_classnumbers(no_class, {("W07", 1): 1}, source="x.klarf")
