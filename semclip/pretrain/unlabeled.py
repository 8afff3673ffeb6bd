"""Unlabelled SEM images for self-distillation: a folder, a label-free manifest or a bucket prefix.

`--unlabeled URI` takes

- a local folder: every PNG/JPEG/TIFF below it (recursive), except the mask folders of a data
  set layout (`masks/`, `ground_truth/`); with ``manifest.csv`` only its `image` column (labels
  and masks are ignored);
- ``file://…`` or ``s3://…``: the same, through fsspec (the project's storage layer). Where the
  prefix is a bucket with ``raw/``, or is ``…/raw`` itself, only ``raw/<YYYY-MM-DD>/`` is read,
  all dates or those `--dates A..B` selects (inclusive). Remote files are mirrored into the work
  folder once (a resume fetches only what is missing or changed).

Images are decoded as the pipeline decodes them (`semclip.data.read_image`: 8/16-bit, TIFF,
JPEG, RGB → gray). A file that is missing, empty or unreadable is skipped and counted per
reason, with the first few named; byte-identical duplicates are used once. Images whose sha256
is in `exclude_hashes` (e.g. a refit's hold-out, which lives in raw/ too) are left out and
counted apart (`source["excluded"]`): a backbone adapted on an evaluation image without its
label would make that evaluation optimistic. Nothing here is fatal except a source with no
usable image at all.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from semclip.data import DatabarCrop, ImageReadError, read_image
from semclip.data.dataset import MANIFEST
from semclip.io.bucket import open_bucket
from semclip.io.paths import IMAGE_SUFFIXES
from semclip.pretrain.archive import SYNTH_META, _resize, _synth_databar
from semclip.pretrain.remote import fetch_changed, is_remote

log = logging.getLogger(__name__)

MIRROR_DIR = "unlabeled-mirror"  # in the work folder, for remote sources
MASK_FOLDERS = frozenset({"masks", "ground_truth"})  # data set layouts keep masks there
EXAMPLES = 20  # skipped files named in the log and the model card
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class DateRange:
    """Inclusive range of ``raw/<YYYY-MM-DD>/`` folders: ``A..B`` or a single ``A``."""

    first: dt.date
    last: dt.date

    @classmethod
    def parse(cls, text: str) -> DateRange:
        a, sep, b = text.strip().partition("..")
        try:
            first = dt.date.fromisoformat(a)
            last = dt.date.fromisoformat(b) if sep else first
        except ValueError:
            raise ValueError(
                f"--dates takes YYYY-MM-DD..YYYY-MM-DD (or one date), got {text!r}"
            ) from None
        if last < first:
            raise ValueError(f"--dates {text!r}: the first date is after the last")
        return cls(first, last)

    def __contains__(self, day: dt.date) -> bool:
        return self.first <= day <= self.last

    def __str__(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


@dataclass(frozen=True)
class UnlabeledImage:
    """One usable unlabelled image."""

    path: Path  # local file (the mirror's copy for remote sources)
    uri: str  # where it came from
    sha256: str  # of the file bytes (what `unlabeled_images.txt` lists)


@dataclass
class UnlabeledSet:
    """The usable images, their decoded pixels (when preloaded) and what was skipped."""

    images: tuple[UnlabeledImage, ...]
    size: int  # stored side R (model size x store_scale, for random crops)
    databar: DatabarCrop
    source: dict[str, Any]  # uri, dates, kind, files listed
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_examples: list[str] = field(default_factory=list)  # "uri: reason", first few
    stored: torch.Tensor | None = None  # (N, R, R) float16 gray in [0, 1], when preloaded

    def __len__(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        """Hash of the source and the used images' hashes: what a resume must see again."""
        text = "\n".join(
            [str(self.source.get("uri")), str(self.source.get("dates"))]
            + sorted(image.sha256 for image in self.images)
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """(b, R, R) float16 gray of the given images (decoded now unless preloaded)."""
        if self.stored is not None:
            return self.stored[torch.as_tensor(indices)]
        return torch.stack([self._decode(self.images[int(i)].path.read_bytes()) for i in indices])

    def _decode(self, data: bytes, name: str | None = None) -> torch.Tensor:
        loaded = read_image(data, name=name)
        pixels = self.databar.apply(loaded.pixels)
        return _resize(pixels, self.size, "bicubic").clamp(0, 1).to(torch.float16)


@dataclass(frozen=True)
class _Listing:
    """Files to read, and the ones named (by a manifest) that do not exist."""

    files: list[tuple[Path, str]]  # (local path, source uri)
    missing: list[tuple[str, str]]  # (uri, reason) of named files that cannot be read
    source: dict[str, Any]
    databar: DatabarCrop


def load_unlabeled(
    uri: str,
    *,
    size: int,
    dates: DateRange | None = None,
    work_dir: Path | None = None,
    endpoint_url: str | None = None,
    databar: DatabarCrop | None = None,
    max_images: int = 0,
    seed: int = 0,
    preload_max_gb: float = 2.0,
    workers: int = 0,
    progress: bool = True,
    exclude_hashes: Collection[str] = frozenset(),
) -> UnlabeledSet:
    """List, fetch (remote), hash and decode the unlabelled images at `uri`.

    `databar` None reads it from a `synth.json` at the source (synthetic data), else crops
    nothing. Files whose sha256 (hex, any case) is in `exclude_hashes` are not used; their
    count is `source["excluded"]`. Raises FileNotFoundError for a missing folder,
    BucketNotFoundError for a missing bucket, ValueError for `--dates` without date folders
    or when no image is usable.
    """
    listing = _list_source(uri, dates, work_dir, endpoint_url, progress)
    crop = databar if databar is not None else listing.databar
    files = listing.files
    if max_images and len(files) > max_images:
        keep = np.sort(np.random.default_rng([seed, 17]).permutation(len(files))[:max_images])
        files = [files[i] for i in keep]
    out = UnlabeledSet((), size, crop, listing.source)
    skipped: list[tuple[str, str]] = list(listing.missing)
    preload = len(files) * size * size * 2 <= preload_max_gb * 2**30
    excluded = {h.strip().lower() for h in exclude_hashes}
    images, pixels, seen, n_excluded = [], [], set(), 0
    for (path, src), result in zip(files, _decode_all(out, files, workers, progress), strict=True):
        if isinstance(result, str):
            skipped.append((src, result))
            continue
        sha, tensor = result
        if sha in excluded:
            n_excluded += 1
            continue
        if sha in seen:
            skipped.append((src, "duplicate"))
            continue
        seen.add(sha)
        images.append(UnlabeledImage(path, src, sha))
        if preload:
            pixels.append(tensor)
    out.images = tuple(images)
    out.stored = torch.stack(pixels) if preload and pixels else None
    out.skipped = dict(sorted(Counter(reason.split(":")[0] for _, reason in skipped).items()))
    out.skipped_examples = [f"{u}: {r}" for u, r in skipped[:EXAMPLES]]
    out.source["files_listed"] = len(listing.files) + len(listing.missing)
    out.source["excluded"] = n_excluded
    if n_excluded:
        log.info("unlabelled images: %d left out by hash (exclude_hashes)", n_excluded)
    if skipped:
        log.warning(
            "unlabelled images: %d skipped (%s), e.g. %s",
            len(skipped),
            ", ".join(f"{k} {v}" for k, v in out.skipped.items()),
            "; ".join(out.skipped_examples[:3]),
        )
    if not images:
        raise ValueError(
            f"no usable image at {uri} (dates {dates or 'all'}): {out.skipped}, "
            f"{n_excluded} excluded by hash"
        )
    log.info("unlabelled images: %d used from %s", len(images), listing.source["uri"])
    return out


def _decode_all(
    out: UnlabeledSet, files: list[tuple[Path, str]], workers: int, progress: bool
) -> list[tuple[str, torch.Tensor] | str]:
    """Per file: (sha256, (R, R) float16) or the reason it is skipped ("empty: …", …)."""

    def one(item: tuple[Path, str]) -> tuple[str, torch.Tensor] | str:
        path, src = item
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return "missing: file not found"
        except OSError as exc:
            return f"unreadable: {exc}"
        if not data:
            return "empty: 0 bytes"
        try:
            return hashlib.sha256(data).hexdigest(), out._decode(data, name=src)
        except ImageReadError as exc:
            return f"unreadable: {exc.reason}"
        except ValueError as exc:  # e.g. a databar taller than the image
            return f"unreadable: {exc}"

    bar = tqdm(total=len(files), desc="decode unlabelled", unit="img", disable=not progress)
    with bar:
        if workers > 0:
            with ThreadPoolExecutor(workers) as pool:
                results = []
                for r in pool.map(one, files):
                    results.append(r)
                    bar.update(1)
                return results
        results = []
        for item in files:
            results.append(one(item))
            bar.update(1)
        return results


def _list_source(
    uri: str,
    dates: DateRange | None,
    work_dir: Path | None,
    endpoint_url: str | None,
    progress: bool,
) -> _Listing:
    """Resolve `uri` to local files: read in place (local folder) or mirrored (remote)."""
    remote = is_remote(uri)
    if remote:
        fs, root = open_bucket(uri, endpoint_url=endpoint_url)
        where = fs.unstrip_protocol(root)
        if not fs.isdir(root):
            raise FileNotFoundError(f"--unlabeled {where}: no such prefix")
    else:
        folder = Path(uri).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--unlabeled {uri}: not a folder")
        fs, root, where = fsspec.filesystem("file"), folder.as_posix(), str(folder)
    fs.invalidate_cache()
    sizes = {
        path[len(root) + 1 :]: int(info.get("size") or 0)
        for path, info in fs.find(root, detail=True).items()
        if path.startswith(root + "/")
    }
    if MANIFEST in sizes and dates is None:
        kind = "manifest"
        rels, missing = _manifest_images(
            fs.cat_file(f"{root}/{MANIFEST}").decode("utf-8-sig"), sizes, not remote
        )
    else:
        kind, rels, missing = (*_select(sizes, dates, where), [])
    source = {"uri": where, "dates": str(dates) if dates else None, "kind": kind}
    if not remote:
        local = Path(root)
        return _Listing(
            [(local / rel, str(local / rel)) for rel in rels],
            [(str(local / rel), why) for rel, why in missing],
            source,
            _synth_databar(local),
        )
    if work_dir is None:
        raise ValueError("a remote --unlabeled source needs a work folder to mirror into")
    mirror = Path(work_dir) / MIRROR_DIR
    wanted = {rel: sizes[rel] for rel in rels}
    if SYNTH_META in sizes:
        wanted[SYNTH_META] = sizes[SYNTH_META]
    fetch_changed(fs, root, wanted, mirror, progress=progress, desc="fetch unlabelled")
    return _Listing(
        [(mirror / rel, fs.unstrip_protocol(f"{root}/{rel}")) for rel in rels],
        [(fs.unstrip_protocol(f"{root}/{rel}"), why) for rel, why in missing],
        source,
        _synth_databar(mirror),
    )


def _select(sizes: dict[str, int], dates: DateRange | None, where: str) -> tuple[str, list[str]]:
    """(kind, image paths relative to the root) of a folder or raw/<date>/ layout."""
    top = PurePosixPath(where.rstrip("/")).name
    under_raw = top == "raw"
    has_raw = any(rel.startswith("raw/") for rel in sizes)
    if dates is not None and not (under_raw or has_raw):
        raise ValueError(f"--dates needs raw/<YYYY-MM-DD>/ folders at {where}")
    rels = []
    for rel in sorted(sizes):
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if MASK_FOLDERS & set(parts[:-1]):
            continue
        if has_raw and not under_raw:
            if parts[0] != "raw":
                continue
            parts = parts[1:]
        if (under_raw or has_raw) and not _in_dates(parts[0] if len(parts) > 1 else "", dates):
            continue
        rels.append(rel)
    kind = "raw dates" if under_raw or has_raw else "folder"
    return kind, rels


def _in_dates(folder: str, dates: DateRange | None) -> bool:
    """Whether a raw/ child folder is a date folder inside `dates` (any date when None)."""
    if not _DATE.match(folder):
        return False
    try:
        day = dt.date.fromisoformat(folder)
    except ValueError:
        return False
    return dates is None or day in dates


def _manifest_images(
    text: str, sizes: dict[str, int], local: bool
) -> tuple[list[str], list[tuple[str, str]]]:
    """The manifest's `image` paths that exist, and (path, reason) of those that cannot be used.

    Paths are relative to the manifest's folder; a local manifest may also name absolute paths
    (as `load_dataset` allows), a remote one only paths inside its prefix.
    """
    rels, bad = [], []
    for row in csv.DictReader(io.StringIO(text)):
        value = (row.get("image") or "").strip()
        if not value:
            continue
        path = PurePosixPath(value)
        if local and Path(value).is_absolute():
            if Path(value).is_file():
                rels.append(value)
            else:
                bad.append((value, "missing"))
        elif "://" in value or path.is_absolute() or ".." in path.parts:
            bad.append((value, "outside: the path leaves the manifest's folder"))
        elif str(path) in sizes:
            rels.append(str(path))
        else:
            bad.append((str(path), "missing"))
    return list(dict.fromkeys(rels)), bad
