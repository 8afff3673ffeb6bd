"""One check for "does this path stay inside its root?", for object keys and local folders.

A manifest row and a ``confirmed/`` CSV row both name files relative to a root (the data set
folder, the bucket). A row that names ``/etc/passwd``, ``file:///…``, ``s3://other-bucket/…``
or ``confirmed/../../…`` must not be read, trained on or recorded in a model's lineage, and a
symlink inside a local root that points out of it must not be followed. Both readers call
:func:`resolve_inside`, so the two cannot drift apart.

Rules (the same for a local folder and an object store):

* backslashes are read as ``/`` (manifests written on Windows);
* an absolute path (``/…``, ``C:\\…``) is refused: rows name files relative to the root;
* a URI (``scheme://…``) is accepted only when its scheme is one of ``protocols`` (the root's
  own file system) and it lies inside the root; any other scheme is refused;
* ``.`` and ``..`` are resolved lexically and the result must stay inside the root;
* with ``local=True`` the path is also resolved on disk (symlinks followed) and the *target*
  must stay inside the root too.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import PureWindowsPath

__all__ = ["OutsideRootError", "is_inside", "resolve_inside"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class OutsideRootError(ValueError):
    """A path leaves its root (or cannot be placed in it); ``reason`` says how."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"path {value!r}: {reason}")
        self.value = value
        self.reason = reason


def resolve_inside(
    root: str,
    value: str,
    *,
    protocols: Sequence[str] = (),
    local: bool = False,
    root_name: str = "the root",
) -> str:
    """The path ``value`` names inside ``root``, as a path of ``root``'s file system.

    ``root`` is a path without protocol: a local folder (``local=True``, absolute) or an
    object-store prefix such as ``bucket/prefix``. The returned path keeps the name as
    written (normalised, not the symlink target), so URIs built from it read like the row.
    ``root_name`` is how messages call ``root`` ("the data set", "the bucket").

    Raises:
        OutsideRootError: when ``value`` is absolute, has a foreign scheme, or resolves
            (lexically, or on disk through symlinks when ``local``) outside ``root``.
    """
    text = value.strip().replace("\\", "/")
    base = _clean_root(root)
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in {p.lower() for p in protocols}:
            raise OutsideRootError(
                value,
                f"a '{scheme}://' URI, outside {_where(root, root_name)} "
                "(rows name paths relative to it, or its own URIs)",
            )
        absolute = text[match.end() :]
        absolute = "/" + absolute.lstrip("/") if local else absolute.lstrip("/")
        path = posixpath.normpath(absolute)
    elif text.startswith("/") or PureWindowsPath(value).drive:
        raise OutsideRootError(
            value, f"absolute path; write it relative to the root ({_where(root, root_name)})"
        )
    else:
        path = posixpath.normpath(posixpath.join(base, text))
    if not is_inside(base, path):
        raise OutsideRootError(value, f"resolves to '{path}', outside {_where(root, root_name)}")
    if local:
        target = os.path.realpath(path)
        if not is_inside(os.path.realpath(base), target):
            raise OutsideRootError(
                value, f"is a link to '{target}', outside {_where(root, root_name)}; not followed"
            )
    return path


def is_inside(root: str, path: str) -> bool:
    """Whether normalised ``path`` is ``root`` itself's descendant (never ``root`` alone)."""
    base = _clean_root(root)
    prefix = base if base.endswith("/") else base + "/"
    return path.startswith(prefix) and len(path) > len(prefix)


def _clean_root(root: str) -> str:
    cleaned = posixpath.normpath(root.replace("\\", "/"))
    return "/" if cleaned in ("/", "//") else cleaned


def _where(root: str, root_name: str = "the root") -> str:
    return f"{root_name} '{root}'"
