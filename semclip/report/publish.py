"""Write a rendered report to ``reports/date=<label>/`` in the bucket, file by file atomically.

Each file is staged under ``_staging/reports/`` and swapped in whole
(:func:`semclip.io.staging.replace_bytes_atomically`); the PNGs go first and ``report.md``
last, so a reader who finds the Markdown finds its charts. Files of an earlier report of the
same label that this one no longer has (a wafer filtered out) are removed afterwards, so the
folder is exactly one report.
"""

from __future__ import annotations

import contextlib

from fsspec import AbstractFileSystem

from semclip.io.bucket import find_files
from semclip.io.staging import replace_bytes_atomically, staging_path
from semclip.report.render import REPORT_FILE, Report

__all__ = ["REPORTS_DIR", "report_folder", "write_report"]

REPORTS_DIR = "reports"


def report_folder(root: str, label: str) -> str:
    """``<root>/reports/date=<label>``: label is a date, or ``first..last`` for a range."""
    return f"{root}/{REPORTS_DIR}/date={label}"


def write_report(fs: AbstractFileSystem, root: str, report: Report) -> list[str]:
    """Write ``report`` (PNGs, then ``report.md``); returns the URIs written, Markdown last."""
    folder = report_folder(root, report.label)
    files = {**report.images, REPORT_FILE: report.markdown.encode("utf-8")}
    written = []
    for name, data in files.items():
        staged = staging_path(root, REPORTS_DIR, report.last_date, name)
        replace_bytes_atomically(fs, staged, f"{folder}/{name}", data)
        written.append(fs.unstrip_protocol(f"{folder}/{name}"))
    fs.invalidate_cache()
    for path in find_files(fs, folder):
        if path.rsplit("/", 1)[-1] not in files:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)
    return written
