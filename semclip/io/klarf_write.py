"""Write predicted classes back into a KLARF: the same file with a new CLASSNUMBER column.

The fab's review and yield tools read KLARF, so the nightly predictions reach them best as a
copy of each input KLARF whose ``DefectList`` carries semclip's class as ``CLASSNUMBER``. Only
those fields change: every other byte of the file (header, spacing, other columns, IMAGELISTs,
the summary) is kept, so a tool that loaded the original loads the copy, and
:func:`semclip.io.klarf.parse_klarf` reads it back identical apart from the class column.
"""

from __future__ import annotations

from collections.abc import Mapping

from semclip.io.klarf import KlarfError, _record_spec, _rows, _statements, _tokens

__all__ = ["rewrite_classnumbers"]

DefectKey = tuple[str | None, int]  # (WaferID of the section, DEFECTID)


def rewrite_classnumbers(
    text: str, classes: Mapping[DefectKey, int], *, source: str = "<klarf>"
) -> tuple[str, int]:
    """Return ``text`` with CLASSNUMBER replaced for the defects in ``classes``, and how many.

    Keys are ``(wafer_id, defect_id)``; ``wafer_id`` is the WaferID of the section the row is
    in (None when the file names none). Defects without a key keep the tool's class. Raises
    :class:`KlarfError` when the file has no CLASSNUMBER column to write into.
    """
    lines = text.splitlines(keepends=True)
    edits: dict[int, list[tuple[int, int, str]]] = {}  # line → (col, length, new text)
    wafer_id: str | None = None
    spec: list[str] | None = None
    for stmt in _statements(_tokens(text, source), source):
        key = stmt.keyword.lower()
        if key == "waferid":
            wafer_id = stmt.values[0].text if stmt.values else None
        elif key == "defectrecordspec":
            spec = _record_spec(stmt, source)
            if "CLASSNUMBER" not in spec:
                raise KlarfError(source, stmt.line, "DefectRecordSpec has no CLASSNUMBER column")
        elif key == "defectlist" and spec is not None:
            for _line, values, _images, cells in _rows(stmt, spec, source):
                defect = int(float(values["DEFECTID"]))
                code = classes.get((wafer_id, defect))
                if code is None:
                    continue
                cell = cells["CLASSNUMBER"]
                edits.setdefault(cell.line, []).append((cell.col, len(cell.text), str(int(code))))
    changed = 0
    for number, line_edits in edits.items():
        line = lines[number - 1]
        for col, length, new in sorted(line_edits, reverse=True):  # right to left: cols stay
            line = line[:col] + new + line[col + length :]
            changed += 1
        lines[number - 1] = line
    return "".join(lines), changed
