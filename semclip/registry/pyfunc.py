"""The generic MLflow face of a semclip model: a pyfunc whose artifact is the model directory.

``MODEL_ARTIFACT`` names the model directory inside the logged model; :func:`artifact_subpath`
finds it again in a downloaded copy.

Every output row carries the *registered* version. A version number does not exist yet when
the model is logged (the directory says ``candidate``), so :meth:`SemclipPyfunc.load_context`
looks it up from the logged model's run id in the registry the caller points MLflow at
(``MLFLOW_TRACKING_URI`` or ``mlflow.set_tracking_uri``); with no registry set or reachable,
or no version registered from that run, ``model_version`` is null, never ``candidate``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from semclip.registry.refs import RegistryError

__all__ = [
    "MODEL_ARTIFACT",
    "MODEL_CODE_FILE",
    "SemclipPyfunc",
    "artifact_subpath",
    "input_example",
    "registered_version",
    "signature",
]

log = logging.getLogger(__name__)


MODEL_ARTIFACT = "semclip_model"  # key of the model directory in the pyfunc artifacts
_LOOKUP_RETRIES, _LOOKUP_TIMEOUT_S = "1", "10"  # the version lookup must not stall a load
# Logged as the python model (MLflow models from code), so loading a version unpickles nothing.
MODEL_CODE_FILE = Path(__file__).with_name("pyfunc_model.py")


class SemclipPyfunc(mlflow.pyfunc.PythonModel):
    """Generic MLflow face of a semclip model: a DataFrame of images in, prediction rows out.

    Input: a column ``image`` (encoded file bytes) or ``image_uri`` (paths or fsspec URIs).
    Output: one row per image with the columns of the declared prediction schema
    (``probabilities`` as a dict, ``bbox`` as a dict or None). Unreadable images give a row
    with ``error`` set, as :meth:`SemclipModel.predict` does.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from semclip.artifact import load_model

        model_dir = context.artifacts[MODEL_ARTIFACT]
        self._model = load_model(model_dir)
        found = registered_version(_logged_run_id(Path(model_dir)), self._model.name)
        if found is not None:
            self._model.name = found[0]
        self._model.version = found[1] if found is not None else None  # type: ignore[assignment]

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        import fsspec

        if "image" in model_input.columns:
            images = list(model_input["image"])
            uris = (
                [str(u) for u in model_input["image_uri"]]
                if "image_uri" in model_input.columns
                else None
            )
        elif "image_uri" in model_input.columns:
            uris = [str(u) for u in model_input["image_uri"]]
            images = [_read_uri(fsspec, u) for u in uris]
        else:
            raise ValueError("input needs a column 'image' (bytes) or 'image_uri' (path/URI)")
        predictions = self._model.predict(images, uris=uris)
        return pd.DataFrame([p.to_record() for p in predictions])


def _read_uri(fsspec_module: Any, uri: str) -> bytes:
    """File bytes, or empty bytes when unreadable: the model then reports the read error."""
    try:
        with fsspec_module.open(uri, "rb") as f:
            return f.read()
    except OSError as exc:
        log.warning("cannot read %s: %s", uri, exc)
        return b""


def signature() -> Any:
    """Input columns of the pyfunc: ``image`` (bytes) and/or ``image_uri``; either may be
    absent. Output: one row per image with the columns of the declared prediction schema;
    ``probabilities`` is a map (its keys are the model's classes), and every column but
    ``image_uri`` and ``model_name`` is null on a failed image."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Map, Object, Property

    inputs = Schema(
        [
            ColSpec("binary", "image", required=False),
            ColSpec("string", "image_uri", required=False),
        ]
    )
    box = Object([Property(axis, DataType.integer) for axis in ("x", "y", "w", "h")])
    columns: list[tuple[Any, str, bool]] = [
        (DataType.string, "image_uri", True),
        (DataType.string, "image_sha256", False),
        (DataType.string, "predicted_class", False),
        (Map(DataType.double), "probabilities", False),
        (DataType.double, "anomaly_score", False),
        (DataType.boolean, "needs_review", False),
        (DataType.string, "mask_rle", False),
        (DataType.long, "mask_height", False),
        (DataType.long, "mask_width", False),
        (DataType.long, "n_regions", False),
        (DataType.long, "defect_area_px", False),
        (DataType.double, "defect_area_nm2", False),
        (box, "bbox", False),
        (DataType.string, "model_name", True),
        (DataType.string, "model_version", False),  # null when no registry knows the run
        (DataType.string, "error", False),
    ]
    outputs = Schema([ColSpec(kind, name, required=required) for kind, name, required in columns])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(model_dir: str | Path) -> pd.DataFrame:
    """One flat mid-grey PNG at the model's input size (plus its databar rows), as bytes.

    Synthetic on purpose: an input example is stored in the clear beside the model, and a
    real support image is fab data. MLflow runs it through the model when logging, which
    checks the model loads and predicts before it is registered.
    """
    import numpy as np
    from PIL import Image

    try:
        meta = json.loads((Path(model_dir) / "model.json").read_text())
        preprocess = meta.get("preprocess", {})
        size = int(preprocess.get("image_size", 64))
        bar = preprocess.get("databar", {}) or {}
        rows = int(bar.get("top", 0) or 0) + int(bar.get("bottom", 0) or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        size, rows = 64, 0
    out = io.BytesIO()
    Image.fromarray(np.full((size + rows, size), 128, dtype=np.uint8)).save(out, format="PNG")
    return pd.DataFrame({"image": [out.getvalue()]})


def registered_version(run_id: str | None, name: str | None = None) -> tuple[str, str] | None:
    """``(name, version)`` registered from ``run_id`` in the registry MLflow points at.

    ``None`` when there is no run id, no registry is set (MLflow's default would create a
    ``mlflow.db`` in the working folder), the registry cannot be reached, or nothing was
    registered from the run. Several matches: the one named ``name``, then the newest.
    """
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    if not run_id or not is_tracking_uri_set():
        return None
    try:
        with _quick_http():
            found = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    except Exception as exc:  # noqa: BLE001 - any registry trouble: the version is unknown
        log.warning("cannot look up the registered version of run %s: %s", run_id, exc)
        return None
    if not found:
        return None
    found = sorted(found, key=lambda v: (v.name == name, int(v.version)), reverse=True)
    return found[0].name, str(found[0].version)


def _logged_run_id(model_dir: Path) -> str | None:
    """The run id in the MLmodel file of the logged model that holds ``model_dir``."""
    from mlflow.models import Model

    for folder in list(model_dir.parents)[:4]:
        if (folder / "MLmodel").is_file():
            try:
                return Model.load(str(folder)).run_id
            except Exception as exc:  # noqa: BLE001 - an unreadable MLmodel: no version
                log.warning("cannot read %s: %s", folder / "MLmodel", exc)
                return None
    return None


@contextmanager
def _quick_http() -> Iterator[None]:
    """Few retries and a short timeout for the lookup, unless the caller chose their own."""
    names = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": _LOOKUP_RETRIES,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": _LOOKUP_TIMEOUT_S,
    }
    added = [name for name in names if name not in os.environ]
    os.environ.update({name: names[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def artifact_subpath(model_root: Path) -> str:
    """Where the semclip directory lies inside a downloaded pyfunc model (from MLmodel)."""
    from mlflow.models import Model

    flavor = Model.load(str(model_root)).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(MODEL_ARTIFACT, {})
    path = entry.get("path") if isinstance(entry, dict) else None
    if not path:
        raise RegistryError(f"{model_root} has no {MODEL_ARTIFACT!r} artifact in its MLmodel")
    return path
