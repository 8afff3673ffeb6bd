"""Ids and wafer positions per image: its path ids joined with a KLARF beside it.

The KLARF parser itself is :mod:`semclip.io.klarf`; this module finds the files in the
bucket, reads them, and matches each image to (at most) one of their defects.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from fsspec import AbstractFileSystem

from semclip.io.bucket import find_files
from semclip.io.klarf import Klarf, KlarfDefect, KlarfError, parse_klarf
from semclip.io.paths import date_prefix, is_klarf_file, parse_ids
from semclip.io.pipeline_schema import KLARF_FIELDS

__all__ = ["ImageDescriptions", "describe_images", "find_klarf", "join_klarf", "read_klarf"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDescriptions:
    """Ids and wafer positions per image URI, plus the KLARFs that could not be read."""

    # uri -> lot/wafer/defect ids, die index, x/y in µm, and the KLARF's own fields
    fields: dict[str, dict[str, Any]]
    klarf_errors: list[str] = field(default_factory=list)  # one "source:line: why" each


def find_klarf(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Sorted paths of the KLARF files directly in ``folder`` (path or URI)."""
    folder = fs._strip_protocol(folder).rstrip("/")
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"] for e in entries if e["type"] == "file" and _is_klarf(e["name"]))


def read_klarf(fs: AbstractFileSystem, path: str) -> Klarf:
    """Read and parse one KLARF; old tools write Latin-1, so that is the fallback."""
    raw = fs.cat_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_klarf(text, source=fs.unstrip_protocol(path))


def join_klarf(
    image_uri: str, path_ids: Mapping[str, str | None], klarfs: Sequence[Klarf]
) -> tuple[Klarf, KlarfDefect] | None:
    """The KLARF defect an image shows, or ``None`` when no unique match exists.

    First by file name (the image is the ``TiffFileName`` of exactly one defect), then by
    defect id: the trailing digits of the path's ``defect_id`` equal ``DEFECTID`` for
    exactly one defect (of the path's wafer, when the path gives one). Ambiguity gives
    ``None`` rather than a guess, because a wrong die position is worse than none.
    """
    name = PurePosixPath(image_uri).name
    candidates = [(k, d) for k in klarfs for d in k.defects]
    by_file = [(k, d) for k, d in candidates if name in d.image_files]
    if len(by_file) == 1:
        return by_file[0]
    number = _trailing_int(path_ids.get("defect_id"))
    if number is None:
        return None
    wafer = path_ids.get("wafer_id")
    by_id = [
        (k, d)
        for k, d in candidates
        if d.defect_id == number and (wafer is None or (d.wafer_id or k.wafer_id) in (None, wafer))
    ]
    return by_id[0] if len(by_id) == 1 else None


def describe_images(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    image_uris: Iterable[str],
    regex: str | re.Pattern[str],
) -> ImageDescriptions:
    """Pipeline id and position columns for each image, from its path and a KLARF beside it.

    Path ids win (they are what the fab configured); the KLARF fills the gaps and is the
    only source of die index and position. A KLARF that fails to parse is reported in
    ``klarf_errors`` and ignored, so one bad file never stops a night's predictions.
    """
    prefix = date_prefix(fs, root, run_date)
    folder_path = f"{root}/raw/{run_date.isoformat()}"
    klarfs: dict[str, list[Klarf]] = {}
    errors: list[str] = []
    for path in (p for p in find_files(fs, folder_path) if _is_klarf(p)):
        try:
            klarf = read_klarf(fs, path)
        except (KlarfError, OSError) as exc:
            logger.warning("skipping KLARF: %s", exc)
            errors.append(str(exc))
            continue
        klarfs.setdefault(str(PurePosixPath(path).parent), []).append(klarf)
    fields = {}
    for uri in image_uris:
        ids = parse_ids(uri, regex, prefix)
        folder = str(PurePosixPath(fs._strip_protocol(uri)).parent)
        match = join_klarf(uri, ids, klarfs.get(folder, []))
        fields[uri] = _image_fields(ids, match)
    return ImageDescriptions(fields=fields, klarf_errors=errors)


def _image_fields(
    ids: Mapping[str, str | None], match: tuple[Klarf, KlarfDefect] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {**ids, "die_x_index": None, "die_y_index": None}
    out.update(x_rel_um=None, y_rel_um=None)
    out.update(dict.fromkeys(f.name for f in KLARF_FIELDS))
    if match is None:
        return out
    klarf, defect = match
    out["lot_id"] = out["lot_id"] or klarf.lot_id
    out["wafer_id"] = out["wafer_id"] or defect.wafer_id or klarf.wafer_id
    out["defect_id"] = out["defect_id"] or str(defect.defect_id)
    out.update(die_x_index=defect.xindex, die_y_index=defect.yindex)
    out.update(x_rel_um=defect.x_rel_um, y_rel_um=defect.y_rel_um)
    # the KLARF's own fields, kept beside the path's ids (defect_id stays the path's)
    out.update(klarf_defect_id=defect.defect_id, klarf_classnumber=defect.classnumber)
    out.update(klarf_step=klarf.step_id, klarf_tool=klarf.tool)
    if klarf.die_pitch_um is not None:
        out.update(die_pitch_x_um=klarf.die_pitch_um[0], die_pitch_y_um=klarf.die_pitch_um[1])
    return out


_is_klarf = is_klarf_file  # the name klarf_export imports


def _trailing_int(value: str | None) -> int | None:
    match = re.search(r"(\d+)$", value or "")
    return int(match.group(1)) if match else None
