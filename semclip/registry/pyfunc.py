"""The generic MLflow face of a semclip model: a pyfunc whose artifact is the model directory.

``MODEL_ARTIFACT`` names the model directory inside the logged model; :func:`artifact_subpath`
finds it again in a downloaded copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from semclip.registry.refs import RegistryError

__all__ = ["MODEL_ARTIFACT", "MODEL_CODE_FILE", "SemclipPyfunc", "artifact_subpath", "signature"]

log = logging.getLogger(__name__)


MODEL_ARTIFACT = "semclip_model"  # key of the model directory in the pyfunc artifacts
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

        self._model = load_model(context.artifacts[MODEL_ARTIFACT])

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
    absent. Output columns vary with the model's classes, so they are left open."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("binary", "image", required=False),
            ColSpec("string", "image_uri", required=False),
        ]
    )
    return ModelSignature(inputs=inputs)


def artifact_subpath(model_root: Path) -> str:
    """Where the semclip directory lies inside a downloaded pyfunc model (from MLmodel)."""
    from mlflow.models import Model

    flavor = Model.load(str(model_root)).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(MODEL_ARTIFACT, {})
    path = entry.get("path") if isinstance(entry, dict) else None
    if not path:
        raise RegistryError(f"{model_root} has no {MODEL_ARTIFACT!r} artifact in its MLmodel")
    return path
