"""An archive in the object store (``s3://…``, ``file://…``): mirrored into the work folder.

Pretraining decodes every archive image into memory once per run and draws its batches from
there, so the store is read once, file by file, into a local mirror beside the checkpoint. A
resumed run fetches only files that are missing or whose size changed, and the sha256 of each
image in `seen_images.txt` is that of the bytes the store holds.

The remote archive uses the manifest layout (``manifest.csv`` with image,label,mask paths
relative to the prefix). Rows that point outside the prefix, and files the manifest names but
the store lacks, are listed all together in one error before anything is downloaded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from fsspec import AbstractFileSystem
from tqdm import tqdm

from semclip.data.dataset import MANIFEST
from semclip.io.bucket import BucketNotFoundError, open_bucket
from semclip.pretrain.archive import MIRROR_META

log = logging.getLogger(__name__)

SIDECARS = ("synth.json",)  # optional files beside the manifest that describe the archive
FETCH_CHUNK = 64  # files per fsspec `get` call (s3fs fetches a call's files concurrently)
_SHOWN = 10  # bad rows / missing files named in an error before "and N more"


def is_remote(data: str | Path) -> bool:
    """True for URLs (``s3://``, ``file://``, …), False for plain local paths."""
    return "://" in str(data)


def mirror_archive(
    url: str, dest: str | Path, *, endpoint_url: str | None = None, progress: bool = True
) -> Path:
    """Copy the manifest archive at ``url`` into ``dest`` (fetching only what changed).

    Raises :class:`~semclip.io.bucket.BucketNotFoundError` for a missing bucket,
    FileNotFoundError when the prefix has no manifest, ValueError listing every row that
    points outside the prefix or names a file the store does not have.
    """
    try:
        fs, root = open_bucket(url, endpoint_url=endpoint_url)
    except BucketNotFoundError as exc:
        reason = str(exc).split(";", 1)[0]  # drop the pipeline's SEMCLIP_BUCKET hint
        raise BucketNotFoundError(f"cannot read the archive {url}: {reason}") from exc
    where = fs.unstrip_protocol(root)
    manifest_path = f"{root}/{MANIFEST}"
    if not fs.exists(manifest_path):
        raise FileNotFoundError(
            f"no {MANIFEST} at {where}: an archive in the object store needs one "
            "(columns image,label,mask; paths relative to the prefix)"
        )
    manifest = fs.cat_file(manifest_path)
    wanted = _referenced_files(manifest.decode("utf-8-sig"), where)
    fs.invalidate_cache()
    listing = {
        path[len(root) + 1 :]: int(info.get("size") or 0)
        for path, info in fs.find(root, detail=True).items()
        if path.startswith(root + "/")
    }
    missing = sorted(set(wanted) - set(listing))
    if missing:
        raise ValueError(
            f"{MANIFEST} at {where} names {len(missing)} file(s) the store does not have: "
            + _enumerate(missing)
        )
    out = Path(dest)
    fetch_changed(fs, root, {rel: listing[rel] for rel in wanted}, out, progress=progress)
    for name in SIDECARS:
        if name in listing:
            (out / name).write_bytes(fs.cat_file(f"{root}/{name}"))
    (out / MANIFEST).write_bytes(manifest)
    (out / MIRROR_META).write_text(json.dumps({"url": where}) + "\n")
    return out


def fetch_changed(
    fs: AbstractFileSystem,
    root: str,
    files: dict[str, int],
    out: Path,
    *,
    progress: bool = True,
    desc: str = "fetch archive",
) -> int:
    """Copy `root/rel` to `out/rel` for each rel (→ size in the store) that is missing or stale.

    Returns how many files were fetched; chunks of FETCH_CHUNK per `get` (s3fs parallelises).
    """
    out.mkdir(parents=True, exist_ok=True)
    todo = [rel for rel, size in files.items() if _stale(out / rel, size)]
    where = fs.unstrip_protocol(root)
    log.info("mirroring %s: %d files, %d to fetch into %s", where, len(files), len(todo), out)
    with tqdm(total=len(todo), unit="file", desc=desc, disable=not progress) as bar:
        for start in range(0, len(todo), FETCH_CHUNK):
            chunk = todo[start : start + FETCH_CHUNK]
            for rel in chunk:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get([f"{root}/{rel}" for rel in chunk], [str(out / rel) for rel in chunk])
            bar.update(len(chunk))
    return len(todo)


def _referenced_files(text: str, where: str) -> list[str]:
    """Relative image and mask paths of the manifest, in order; every escaping row listed."""
    files: dict[str, None] = {}
    bad = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        for column in ("image", "mask"):
            value = (row.get(column) or "").strip()
            if not value:
                continue
            path = PurePosixPath(value)
            if "://" in value or path.is_absolute() or ".." in path.parts:
                bad.append(f"line {line}: {column} {value!r}")
            else:
                files[str(path)] = None
    if bad:
        raise ValueError(
            f"{MANIFEST} at {where} has {len(bad)} path(s) outside its prefix: " + _enumerate(bad)
        )
    if not files:
        raise ValueError(f"{MANIFEST} at {where} lists no images")
    return list(files)


def _stale(path: Path, size: int) -> bool:
    """Fetch again when the local copy is missing or its size differs from the store's."""
    return not path.is_file() or path.stat().st_size != size


def _enumerate(items: Iterable[str]) -> str:
    items = list(items)
    shown = "; ".join(items[:_SHOWN])
    return shown + (f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
