"""KLARF write-back for a date: each input KLARF copied to ``klarf_out/<date>/`` with our classes.

For every KLARF under ``raw/<date>/`` the current prediction rows of the images in its folder
are matched to its defects exactly as the nightly join does (:func:`join_klarf`: by image file
name, then by defect id), each predicted class is turned into the fab's numeric code through
the class-code map, and :func:`rewrite_classnumbers` writes it into CLASSNUMBER, leaving every
other byte alone. The copy keeps the file's path below ``raw/<date>/`` and its encoding, and
is written atomically (staged, then swapped in whole).

A predicted class the map does not know keeps the tool's own code in that row, and is counted
and named in the result (``unmapped``), so one missing code never withholds a whole file; with
``strict=True`` it raises :class:`UnknownClassCodeError` instead, before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from fsspec import AbstractFileSystem

from semclip.io.bucket import find_files
from semclip.io.klarf import KlarfError, parse_klarf
from semclip.io.klarf_join import _is_klarf, join_klarf
from semclip.io.klarf_write import DefectKey, rewrite_classnumbers
from semclip.io.paths import date_prefix, parse_ids
from semclip.io.query import connect
from semclip.io.staging import replace_bytes_atomically, staging_path

__all__ = [
    "KLARF_OUT_DIR",
    "KlarfExport",
    "UnknownClassCodeError",
    "export_date",
    "load_class_codes",
    "parse_class_codes",
]

log = logging.getLogger(__name__)

KLARF_OUT_DIR = "klarf_out"


class UnknownClassCodeError(ValueError):
    """A predicted class has no KLARF class code (strict export)."""


@dataclass
class KlarfExport:
    """What one date's export wrote."""

    written: list[str] = field(default_factory=list)  # URIs under klarf_out/<date>/
    defects_coded: int = 0  # DefectList rows whose CLASSNUMBER is now semclip's class
    unmapped: dict[str, int] = field(default_factory=dict)  # class without a code -> rows kept
    errors: list[str] = field(default_factory=list)  # KLARFs not exported, "source: why"


def parse_class_codes(text: str | None, *, source: str = "SEMCLIP_CLASS_CODES") -> dict[str, int]:
    """``particle=1,bridge=2`` or a JSON object as ``{class: code}``; ``None``/empty: ``{}``."""
    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            pairs = list(json.loads(text).items())
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{source}: not a JSON object ({exc})") from None
    else:
        pairs = []
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, sep, code = item.partition("=")
            if not sep:
                raise ValueError(f"{source}: {item!r} is not class=code")
            pairs.append((name.strip(), code.strip()))
    return _checked(pairs, source)


def load_class_codes(
    prompt_file: str | Path | None = None, setting: str | None = None
) -> dict[str, int]:
    """The class-code map: ``class_codes:`` of the prompt file, overridden by the setting.

    ``prompt_file`` None is the packaged ``semclip/prompts/default.yaml``.
    """
    if prompt_file is None:
        ref = resources.files("semclip") / "prompts" / "default.yaml"
        data, source = yaml.safe_load(ref.read_text()), str(ref)
    else:
        data, source = yaml.safe_load(Path(prompt_file).read_text()), str(prompt_file)
    codes = _checked(list((data or {}).get("class_codes", {}).items()), f"{source} class_codes")
    return {**codes, **parse_class_codes(setting)}


def _checked(pairs: list[tuple[Any, Any]], source: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, code in pairs:
        text = str(code).strip()
        if not re.fullmatch(r"-?\d+", text):
            raise ValueError(f"{source}: code {code!r} of class {name!r} is not an integer")
        out[str(name).strip()] = int(text)
    return out


def export_date(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    codes: Mapping[str, int],
    *,
    path_regex: str,
    champion: tuple[str, str] | None = None,
    strict: bool = False,
) -> KlarfExport:
    """Write ``klarf_out/<date>/…`` for every KLARF under ``raw/<date>/`` (see module doc)."""
    classes = _current_classes(fs, root, run_date, champion)
    if strict:
        unknown = sorted({c for c in classes.values() if c not in codes})
        if unknown:
            raise UnknownClassCodeError(
                f"predicted class(es) {unknown} of {run_date} have no KLARF class code: add them "
                "to class_codes: in the prompt file or to SEMCLIP_CLASS_CODES"
            )
    raw = f"{root}/raw/{run_date.isoformat()}"
    prefix = date_prefix(fs, root, run_date)
    result = KlarfExport()
    for path in (p for p in find_files(fs, raw) if _is_klarf(p)):
        try:
            text, encoding = _read_text(fs, path)
            edits = _edits(fs, path, text, classes, codes, prefix, path_regex, result)
            new_text, changed = rewrite_classnumbers(text, edits, source=fs.unstrip_protocol(path))
        except (KlarfError, OSError) as exc:
            log.warning("KLARF not exported: %s", exc)
            result.errors.append(str(exc))
            continue
        relative = path[len(raw) + 1 :]
        final = f"{root}/{KLARF_OUT_DIR}/{run_date.isoformat()}/{relative}"
        staged = staging_path(root, KLARF_OUT_DIR, run_date, PurePosixPath(relative).name)
        replace_bytes_atomically(fs, staged, final, new_text.encode(encoding))
        result.written.append(fs.unstrip_protocol(final))
        result.defects_coded += changed
    return result


def _current_classes(
    fs: AbstractFileSystem, root: str, run_date: dt.date, champion: tuple[str, str] | None
) -> dict[str, str]:
    """``image path -> predicted class`` of the date's current rows (errors left out)."""
    con = connect(fs, root, [run_date], champion=champion)
    rows = con.execute(
        "SELECT image_uri, predicted_class FROM predictions "
        "WHERE error IS NULL AND predicted_class IS NOT NULL"
    ).fetchall()
    return {fs._strip_protocol(uri): cls for uri, cls in rows}


def _edits(
    fs: AbstractFileSystem,
    path: str,
    text: str,
    classes: Mapping[str, str],
    codes: Mapping[str, int],
    prefix: str,
    path_regex: str,
    result: KlarfExport,
) -> dict[DefectKey, int]:
    """``(wafer, DEFECTID) -> code`` for the predicted images beside this KLARF."""
    klarf = parse_klarf(text, source=fs.unstrip_protocol(path))
    folder = str(PurePosixPath(path).parent)
    edits: dict[DefectKey, int] = {}
    for image, cls in classes.items():
        if str(PurePosixPath(image).parent) != folder:
            continue
        uri = fs.unstrip_protocol(image)
        match = join_klarf(uri, parse_ids(uri, path_regex, prefix), [klarf])
        if match is None:
            continue
        _, defect = match
        if cls not in codes:
            result.unmapped[cls] = result.unmapped.get(cls, 0) + 1
            continue
        edits[(defect.wafer_id, defect.defect_id)] = codes[cls]
    return edits


def _read_text(fs: AbstractFileSystem, path: str) -> tuple[str, str]:
    """The KLARF's text and its encoding (UTF-8, else Latin-1 as old tools write)."""
    raw = fs.cat_file(path)
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"
