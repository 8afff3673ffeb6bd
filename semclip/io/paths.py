"""The ``raw/<date>/`` layout: a date's images, and the lot/wafer/defect ids in their paths."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from fsspec import AbstractFileSystem

from semclip.data.images import IMAGE_SUFFIXES
from semclip.io.bucket import file_suffix, find_files, is_local, resolve_in_bucket
from semclip.safe_paths import OutsideRootError

__all__ = [
    "ID_FIELDS",
    "IMAGE_SUFFIXES",
    "date_prefix",
    "is_klarf_file",
    "links_outside_bucket",
    "list_raw_images",
    "parse_ids",
    "raw_listing",
]


ID_FIELDS = ("lot_id", "wafer_id", "defect_id")
KLARF_SUFFIXES = frozenset({".klarf", ".klf", ".kla", ".klr"})
_KLARF_NUMBERED = re.compile(r"\.\d{3}")  # tools also write <lot>.000, <lot>.001, …


def is_klarf_file(path: str) -> bool:
    """Whether a file of ``raw/<date>/`` is a KLARF (by its suffix), read beside the images."""
    suffix = file_suffix(path)
    return suffix in KLARF_SUFFIXES or bool(_KLARF_NUMBERED.fullmatch(suffix))


def date_prefix(fs: AbstractFileSystem, root: str, run_date: dt.date) -> str:
    """URI of ``raw/<date>/`` with a trailing slash: what :func:`parse_ids` strips."""
    return fs.unstrip_protocol(f"{root}/raw/{run_date.isoformat()}") + "/"


def list_raw_images(fs: AbstractFileSystem, root: str, run_date: dt.date) -> list[str]:
    """Sorted URIs of the images under ``raw/<date>/`` (and only that date), any depth."""
    return raw_listing(fs, root, run_date)[0]


def raw_listing(
    fs: AbstractFileSystem, root: str, run_date: dt.date
) -> tuple[list[str], dict[str, list[str]]]:
    """(image URIs, other files by why they are left alone) under ``raw/<date>/``.

    Hidden files (a name, or a folder on the way, starting with ``.``: macOS ``._*``
    resource forks, editors' temporary files) are never images to predict, whatever their
    suffix; files of other types (not an image semclip reads, not a KLARF) are left alone
    too. Both are returned by reason so the run can say what it did not read, instead of a
    night of ``.gif`` files reading as an empty night.
    """
    folder = f"{root}/raw/{run_date.isoformat()}"
    images: list[str] = []
    ignored: dict[str, list[str]] = {}
    for path in find_files(fs, folder):
        below = path[len(folder) :].lstrip("/")
        if any(part.startswith(".") for part in below.split("/")):
            ignored.setdefault("hidden file", []).append(fs.unstrip_protocol(path))
        elif file_suffix(path) in IMAGE_SUFFIXES:
            images.append(fs.unstrip_protocol(path))
        elif not is_klarf_file(path):
            reason = f"not an image type semclip reads ({file_suffix(path) or 'no suffix'})"
            ignored.setdefault(reason, []).append(fs.unstrip_protocol(path))
    return images, ignored


def links_outside_bucket(fs: AbstractFileSystem, root: str, uris: Sequence[str]) -> dict[str, str]:
    """Quarantine reason per listed image that is a link out of a local bucket.

    A local bucket's ``raw/`` may hold symlinks (or linked folders) that a listing follows;
    reading them would predict, and store the URI of, a file that is not in the bucket.
    Object stores have no links: there the answer is always empty.
    """
    if not is_local(fs):
        return {}
    reasons = {}
    for uri in uris:
        try:
            resolve_in_bucket(fs, root, uri)
        except OutsideRootError as exc:
            reasons[uri] = f"outside the bucket: {exc.reason}"
    return reasons


def parse_ids(
    uri: str, regex: str | re.Pattern[str], date_prefix: str = ""
) -> dict[str, str | None]:
    """``lot_id``, ``wafer_id``, ``defect_id`` from the path of ``uri`` below ``date_prefix``.

    The regex is *searched*, so a pattern anchored with ``$`` matches the last folders of a
    deeper layout. A group the regex lacks, or a path it does not match, gives ``None``.
    """
    pattern = re.compile(regex) if isinstance(regex, str) else regex
    prefix = date_prefix.rstrip("/") + "/" if date_prefix else ""
    relative = uri[len(prefix) :] if prefix and uri.startswith(prefix) else uri
    match = pattern.search(relative)
    groups = match.groupdict() if match else {}
    return {name: groups.get(name) or None for name in ID_FIELDS}
