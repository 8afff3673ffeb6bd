"""A small reader for KLARF 1.2 defect files, enough to place each SEM image on the wafer.

Inspection and review tools drop a KLARF next to the images of a wafer. We read the lot and
wafer ids, the process step, the inspection tool, the die pitch, the defect table and the image
file name, so prediction rows can say which die and where in it a defect sits
(:class:`KlarfDefect`), and a wafer map can place it. Everything else in the file is skipped.

What the format looks like (statements end with ``;``, lists may span many lines)::

    LotID "LOT42";
    StepID "M1_CMP";
    InspectionStationID "KLA" "2367" "TOOL01";
    DiePitch 1.0e+04 8.0e+03;
    WaferID "W07";
    TiffFileName W07.tif;
    DefectRecordSpec 8 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER IMAGECOUNT IMAGELIST;
    DefectList
     1 1234.5 678.9 3 -2 17 1 1 1 0
     2 10.0 20.0 4 5 0 0 0;

Columns are mapped by name because their order differs between tools. ``IMAGELIST`` is
variable length: a count *n* then *n* pairs ``(image number, image type)``, the image number
being the page of the ``TiffFileName`` file.

Units: KLARF 1.x gives positions in micrometres (``DiePitch``, ``XREL``/``YREL``, sizes), the
convention this reader assumes. A tool that writes nanometres needs ``um_per_unit=1e-3``.

Malformed input raises :class:`KlarfError` with ``source:line`` so the nightly flow can log
one readable line and go on with the ids it gets from the image paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Klarf", "KlarfDefect", "KlarfError", "parse_klarf"]

_REQUIRED_COLUMNS = ("DEFECTID", "XREL", "YREL", "XINDEX", "YINDEX")
# A quoted string, a lone ';', or a run of anything else up to whitespace, quote or ';'.
_KLARF_18_RE = re.compile(r"\s*Record\s+FileRecord\b")
_TOKEN_RE = re.compile(r'"(?P<quoted>[^"\n]*)"|(?P<semi>;)|(?P<bare>[^\s";]+)|(?P<bad>")')


class KlarfError(ValueError):
    """A KLARF file could not be read; the message starts with ``source:line``."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class KlarfDefect:
    """One row of a KLARF ``DefectList``."""

    defect_id: int  # DEFECTID, unique within the wafer
    x_rel_um: float  # XREL: x of the defect from the die origin, micrometres
    y_rel_um: float  # YREL: y of the defect from the die origin, micrometres
    xindex: int  # XINDEX: die column on the wafer
    yindex: int  # YINDEX: die row on the wafer
    classnumber: int | None  # CLASSNUMBER (tool's class code); None when the column is absent
    image_files: tuple[str, ...] = ()  # TiffFileName of the wafer when this defect has images
    image_numbers: tuple[int, ...] = ()  # IMAGELIST image numbers (pages of that file)
    wafer_id: str | None = None  # WaferID of the section the row is in
    line: int = 0  # line of the file where the row starts, for messages


@dataclass(frozen=True)
class Klarf:
    """What semclip uses of one KLARF file."""

    source: str  # where the text came from, used in every message
    lot_id: str | None  # LotID
    wafer_id: str | None  # WaferID; None when absent or the file holds several wafers
    defects: list[KlarfDefect] = field(default_factory=list)
    step_id: str | None = None  # StepID: the process step inspected (e.g. "M1_CMP")
    tool: str | None = None  # InspectionStationID's values joined by spaces ("KLA 2367 TOOL01")
    die_pitch_um: tuple[float, float] | None = None  # DiePitch x, y in micrometres


@dataclass(frozen=True)
class _Token:
    text: str
    line: int
    quoted: bool = False
    col: int = 0  # offset of the token's first character in its line (the quote, if quoted)


@dataclass(frozen=True)
class _Statement:
    keyword: str
    line: int
    values: list[_Token]


@dataclass
class _Wafer:
    wafer_id: str | None
    tiff_file: str | None = None
    rows: list[tuple[int, dict[str, str], list[int]]] = field(default_factory=list)


def parse_klarf(text: str, *, source: str = "<klarf>", um_per_unit: float = 1.0) -> Klarf:
    """Parse KLARF 1.2 ``text``; ``source`` names it in errors.

    ``um_per_unit`` scales ``XREL``/``YREL`` to micrometres (1.0 for spec-conforming files).
    Raises :class:`KlarfError` on a missing ``DefectRecordSpec``, a row with too many or too
    few fields, a non-numeric value, or a statement not closed by ``;``.
    """
    if _KLARF_18_RE.match(text):
        raise KlarfError(source, 1, "KLARF 1.8 (Record/Field syntax) is not supported, only 1.x")
    lot_id: str | None = None
    lot_tiff: str | None = None
    step_id: str | None = None
    tool: str | None = None
    pitch: tuple[float, float] | None = None
    wafers: list[_Wafer] = []
    spec: list[str] | None = None
    for stmt in _statements(_tokens(text, source), source):
        key = stmt.keyword.lower()
        if key == "lotid":
            lot_id = _single_value(stmt, source)
        elif key == "waferid":
            wafers.append(_Wafer(_single_value(stmt, source)))
        elif key == "stepid":
            step_id = _single_value(stmt, source)
        elif key == "inspectionstationid":
            tool = " ".join(t.text for t in stmt.values) or None
        elif key == "diepitch":
            pitch = _pitch(stmt, source, um_per_unit)
        elif key == "tifffilename":
            name = _single_value(stmt, source)
            if wafers:
                wafers[-1].tiff_file = name
            else:
                lot_tiff = name
        elif key == "defectrecordspec":
            spec = _record_spec(stmt, source)
        elif key == "defectlist":
            if spec is None:
                raise KlarfError(source, stmt.line, "DefectList before any DefectRecordSpec")
            if not wafers:
                wafers.append(_Wafer(None))
            wafers[-1].rows.extend(row[:3] for row in _rows(stmt, spec, source))
    if spec is None:
        raise KlarfError(source, None, "no DefectRecordSpec: not a KLARF defect file")
    defects = [
        _defect(values, images, wafer, lot_tiff, line, source, um_per_unit)
        for wafer in wafers
        for line, values, images in wafer.rows
    ]
    wafer_ids = {w.wafer_id for w in wafers if w.wafer_id is not None}
    wafer_id = wafer_ids.pop() if len(wafer_ids) == 1 else None
    return Klarf(
        source=source,
        lot_id=lot_id,
        wafer_id=wafer_id,
        defects=defects,
        step_id=step_id,
        tool=tool,
        die_pitch_um=pitch,
    )


def _pitch(stmt: _Statement, source: str, um_per_unit: float) -> tuple[float, float]:
    """``DiePitch x y;``: the die step on the wafer, scaled to micrometres; both positive."""
    if len(stmt.values) != 2:
        raise KlarfError(source, stmt.line, f"DiePitch needs 2 values, got {len(stmt.values)}")
    x, y = (_float(t, "DiePitch", source) * um_per_unit for t in stmt.values)
    if x <= 0 or y <= 0:
        raise KlarfError(source, stmt.line, f"DiePitch {x} {y} is not positive")
    return x, y


def _tokens(text: str, source: str) -> Iterator[_Token]:
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _TOKEN_RE.finditer(line):
            if match.group("bad") is not None:
                raise KlarfError(source, number, "unterminated quoted string")
            if match.group("quoted") is not None:
                yield _Token(match.group("quoted"), number, quoted=True, col=match.start())
            else:
                yield _Token(match.group(0), number, col=match.start())


def _statements(tokens: Iterator[_Token], source: str) -> Iterator[_Statement]:
    """Group tokens into ``keyword values… ;`` statements."""
    current: list[_Token] = []
    for token in tokens:
        if token.text == ";" and not token.quoted:
            if current:
                yield _Statement(current[0].text, current[0].line, current[1:])
            current = []
        else:
            current.append(token)
    if current:
        raise KlarfError(
            source, current[0].line, f"{current[0].text} is not terminated by ';' before the end"
        )


def _single_value(stmt: _Statement, source: str) -> str:
    if not stmt.values:
        raise KlarfError(source, stmt.line, f"{stmt.keyword} has no value")
    return stmt.values[0].text


def _record_spec(stmt: _Statement, source: str) -> list[str]:
    if not stmt.values:
        raise KlarfError(source, stmt.line, "DefectRecordSpec has no column count")
    count = _int(stmt.values[0], "DefectRecordSpec column count", source)
    names = [t.text.upper() for t in stmt.values[1:]]
    if count != len(names):
        raise KlarfError(
            source, stmt.line, f"DefectRecordSpec says {count} columns but names {len(names)}"
        )
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    if missing:
        raise KlarfError(source, stmt.line, f"DefectRecordSpec lacks column(s) {missing}")
    if len(set(names)) != len(names):
        raise KlarfError(source, stmt.line, "DefectRecordSpec repeats a column name")
    return names


def _rows(
    stmt: _Statement, spec: Sequence[str], source: str
) -> Iterator[tuple[int, dict[str, str], list[int], dict[str, _Token]]]:
    """Split the DefectList values into rows of ``spec``: (line, values, images, tokens).

    A row may wrap onto several lines (long IMAGELISTs do), but a new row starts on a new
    line: a row that ends mid-line means the line has more fields than the spec, which is
    how a shifted column shows up, so it is an error rather than silently re-aligned.
    """
    tokens = stmt.values
    i = 0
    while i < len(tokens):
        start = tokens[i]
        values: dict[str, str] = {}
        cells: dict[str, _Token] = {}
        images: list[int] = []
        for column in spec:
            if i >= len(tokens):
                raise KlarfError(
                    source,
                    start.line,
                    f"defect row has fewer fields than DefectRecordSpec (no {column})",
                )
            if column == "IMAGELIST":
                images, i = _image_list(tokens, i, start.line, source)
            else:
                values[column] = tokens[i].text
                cells[column] = tokens[i]
                i += 1
        if i < len(tokens) and tokens[i].line == tokens[i - 1].line:
            raise KlarfError(
                source,
                tokens[i].line,
                f"defect row has more fields than the {len(spec)} of DefectRecordSpec",
            )
        yield start.line, values, images, cells


def _image_list(
    tokens: Sequence[_Token], i: int, row_line: int, source: str
) -> tuple[list[int], int]:
    """Read ``n`` then ``n`` (image number, image type) pairs; return the numbers and next i."""
    n = _int(tokens[i], "IMAGELIST count", source)
    if n < 0:
        raise KlarfError(source, tokens[i].line, f"IMAGELIST count {n} is negative")
    end = i + 1 + 2 * n
    if end > len(tokens):
        raise KlarfError(
            source, row_line, f"IMAGELIST announces {n} image(s) but the list ends first"
        )
    numbers = [_int(tokens[j], "IMAGELIST image number", source) for j in range(i + 1, end, 2)]
    for j in range(i + 2, end, 2):
        _int(tokens[j], "IMAGELIST image type", source)
    return numbers, end


def _defect(
    values: dict[str, str],
    images: list[int],
    wafer: _Wafer,
    lot_tiff: str | None,
    line: int,
    source: str,
    um_per_unit: float,
) -> KlarfDefect:
    def number(column: str) -> float:
        return _float(_Token(values[column], line), column, source)

    def integer(column: str) -> int:
        return _int(_Token(values[column], line), column, source)

    tiff = wafer.tiff_file or lot_tiff
    has_image_columns = "IMAGECOUNT" in values or "IMAGELIST" in values or images
    image_count = integer("IMAGECOUNT") if "IMAGECOUNT" in values else len(images)
    has_images = (image_count > 0 or bool(images)) if has_image_columns else True
    return KlarfDefect(
        defect_id=integer("DEFECTID"),
        x_rel_um=number("XREL") * um_per_unit,
        y_rel_um=number("YREL") * um_per_unit,
        xindex=integer("XINDEX"),
        yindex=integer("YINDEX"),
        classnumber=integer("CLASSNUMBER") if "CLASSNUMBER" in values else None,
        image_files=(tiff,) if tiff and has_images else (),
        image_numbers=tuple(images),
        wafer_id=wafer.wafer_id,
        line=line,
    )


def _float(token: _Token, what: str, source: str) -> float:
    try:
        value = float(token.text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise KlarfError(source, token.line, f"{what} {token.text!r} is not a finite number")
    return value


def _int(token: _Token, what: str, source: str) -> int:
    """Integers, also written as ``12.0`` or ``1.2e+01`` by some tools."""
    try:
        return int(token.text)
    except ValueError:
        pass
    value = _float(token, what, source)
    if not value.is_integer():
        raise KlarfError(source, token.line, f"{what} {token.text!r} is not an integer")
    return int(value)
