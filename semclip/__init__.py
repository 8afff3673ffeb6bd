"""semclip: few-shot SEM wafer defect classification and segmentation (SEM-CLIP).

The public API. Names resolve lazily (PEP 562), so importing a light module such as
`semclip.settings` or `semclip.rle` does not pay for torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Backbone": "semclip.backbone",
    "BackboneError": "semclip.backbone",
    "load_backbone": "semclip.backbone",
    "Calibration": "semclip.config",
    "FitConfig": "semclip.config",
    "PredictConfig": "semclip.config",
    "DatabarCrop": "semclip.data",
    "Dataset": "semclip.data",
    "DatasetError": "semclip.data",
    "load_dataset": "semclip.data",
    "DualPathEncoder": "semclip.encoder",
    "StageFeatures": "semclip.encoder",
    "SemclipModel": "semclip.model",
    "SupportItem": "semclip.model",
    "Prediction": "semclip.prediction",
    "PromptLibrary": "semclip.prompts",
    "load_prompts": "semclip.prompts",
    "text_prototypes": "semclip.prompts",
    "IncompatibleModelError": "semclip.artifact",
    "load_model": "semclip.artifact",
    "save_model": "semclip.artifact",
}

__all__ = [
    "__version__",
    "Backbone",
    "BackboneError",
    "Calibration",
    "DatabarCrop",
    "Dataset",
    "DatasetError",
    "DualPathEncoder",
    "FitConfig",
    "IncompatibleModelError",
    "PredictConfig",
    "Prediction",
    "PromptLibrary",
    "SemclipModel",
    "StageFeatures",
    "SupportItem",
    "load_backbone",
    "load_dataset",
    "load_model",
    "load_prompts",
    "save_model",
    "text_prototypes",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'semclip' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from semclip.artifact import IncompatibleModelError, load_model, save_model
    from semclip.backbone import Backbone, BackboneError, load_backbone
    from semclip.config import Calibration, FitConfig, PredictConfig
    from semclip.data import DatabarCrop, Dataset, DatasetError, load_dataset
    from semclip.encoder import DualPathEncoder, StageFeatures
    from semclip.model import SemclipModel, SupportItem
    from semclip.prediction import Prediction
    from semclip.prompts import PromptLibrary, load_prompts, text_prototypes
