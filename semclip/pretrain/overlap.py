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


def write_seen_images(folder: str | os.PathLike, hashes: Iterable[str]) -> Path:
    """Write the sorted, distinct hashes to `folder/seen_images.txt`; returns the file."""
    path = Path(folder) / SEEN_IMAGES
    path.write_text("".join(f"{h}\n" for h in sorted(set(hashes))))
    return path


def read_seen_images(backbone_dir: str | os.PathLike) -> set[str]:
    """Hashes a backbone was pretrained on; empty when its folder has no `seen_images.txt`.

    `backbone_dir` may carry the `local-dir:` prefix, as `--backbone` values do. A backbone
    from elsewhere (e.g. LAION weights) has no such file: nothing is known, nothing is flagged.
    """
    text = os.fspath(backbone_dir)
    folder = Path(text[len(LOCAL_DIR_PREFIX) :] if text.startswith(LOCAL_DIR_PREFIX) else text)
    path = folder.expanduser() / SEEN_IMAGES
    if not path.is_file():
        log.debug("no %s in %s: pretraining data unknown", SEEN_IMAGES, folder)
        return set()
    return {line.strip().lower() for line in path.read_text().splitlines() if line.strip()}


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
