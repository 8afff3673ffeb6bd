"""The few-shot honesty guard: which images a pretrained backbone has already seen.

`semclip pretrain` writes `seen_images.txt` (sha256 of each archive image file's bytes, one a
line) into the backbone folder. Evaluation hashes its test images the same way and refuses, or
warns loudly, on any overlap: a backbone that saw a test image makes few-shot figures
optimistic. Bytes, not paths, because archives are copied and renamed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from semclip.backbone import LOCAL_DIR_PREFIX, file_sha256

log = logging.getLogger(__name__)

SEEN_IMAGES = "seen_images.txt"
UNLABELED_IMAGES = "unlabeled_images.txt"  # images the backbone adapted on without labels


def write_seen_images(
    folder: str | os.PathLike, hashes: Iterable[str], name: str = SEEN_IMAGES
) -> Path:
    """Write the sorted, distinct hashes to `folder/name` (seen_images.txt); returns the file."""
    path = Path(folder) / name
    path.write_text("".join(f"{h}\n" for h in sorted(set(hashes))))
    return path


def read_seen_images(backbone_dir: str | os.PathLike, name: str = SEEN_IMAGES) -> set[str]:
    """Hashes a backbone was pretrained on; empty when its folder has no `seen_images.txt`.

    `backbone_dir` may carry the `local-dir:` prefix, as `--backbone` values do. A backbone
    from elsewhere (e.g. LAION weights) has no such file: nothing is known, nothing is flagged.
    `name` UNLABELED_IMAGES reads the images it adapted on without labels instead.
    """
    text = os.fspath(backbone_dir)
    folder = Path(text[len(LOCAL_DIR_PREFIX) :] if text.startswith(LOCAL_DIR_PREFIX) else text)
    path = folder.expanduser() / name
    if not path.is_file():
        log.debug("no %s in %s: pretraining data unknown", name, folder)
        return set()
    return {line.strip().lower() for line in path.read_text().splitlines() if line.strip()}


def read_unlabeled_images(backbone_dir: str | os.PathLike) -> set[str]:
    """Hashes of the images a backbone adapted on without labels (`unlabeled_images.txt`)."""
    return read_seen_images(backbone_dir, UNLABELED_IMAGES)


def unlabeled_hash_overlap(hashes: Iterable[str], backbone: str | os.PathLike) -> set[str]:
    """The given sha256 hashes that `backbone` adapted on without labels (cf. unlabeled_overlap,
    which hashes files).

    What a refit's gate reports for its hold-out: each one is an evaluation image the
    backbone has seen (transductively), so the hold-out figures lean optimistic. Empty for a
    backbone with no `unlabeled_images.txt` (hub weights, a plain `local-dir:` folder).
    """
    text = os.fspath(backbone)
    if not text.startswith(LOCAL_DIR_PREFIX) and not Path(text).is_dir():
        return set()  # an open_clip name: no image lists to read
    return {h.lower() for h in hashes} & read_unlabeled_images(backbone)


def inherited_images(model: str, pretrained: str | None) -> dict[str, set[str]]:
    """What the starting weights already saw: {SEEN_IMAGES: …, UNLABELED_IMAGES: …}.

    A run continued from a `local-dir:` folder (or a weights file inside one) inherits its
    lists, so the overlap guard still knows every image behind the new backbone.
    """
    folder: Path | None = None
    if model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(model[len(LOCAL_DIR_PREFIX) :]).expanduser()
    elif pretrained and Path(pretrained).is_file():
        folder = Path(pretrained).parent
    if folder is None:
        return {SEEN_IMAGES: set(), UNLABELED_IMAGES: set()}
    return {name: read_seen_images(folder, name) for name in (SEEN_IMAGES, UNLABELED_IMAGES)}


def seen_overlap(
    backbone_dir: str | os.PathLike, image_paths: Iterable[str | os.PathLike]
) -> set[str]:
    """The given image paths (as strings) whose file bytes the backbone was pretrained on.

    Empty when there is no overlap or when the backbone has no `seen_images.txt`.
    """
    seen = read_seen_images(backbone_dir)
    if not seen:
        return set()
    return {os.fspath(p) for p in image_paths if file_sha256(p) in seen}


def unlabeled_overlap(
    backbone_dir: str | os.PathLike, image_paths: Iterable[str | os.PathLike]
) -> set[str]:
    """The given image paths whose bytes the backbone adapted on without labels.

    Transductive adaptation (on the very images later predicted) is legitimate but must be
    reported; empty when there is none or the backbone has no `unlabeled_images.txt`.
    """
    seen = read_unlabeled_images(backbone_dir)
    if not seen:
        return set()
    return {os.fspath(p) for p in image_paths if file_sha256(p) in seen}


def transductive_note(seen: int, total: int) -> str:
    """The sentence evaluation reports (metrics.json, report.md) about unlabelled overlap."""
    return (
        f"transductive: {seen} of {total} test images were in the backbone's unlabelled "
        "adaptation set"
    )
