"""semclip: few-shot SEM wafer defect classification and segmentation (SEM-CLIP).

The public API; nothing here does work at import time.
"""

from semclip.artifact import IncompatibleModelError, load_model, save_model
from semclip.backbone import Backbone, BackboneError, load_backbone
from semclip.config import Calibration, FitConfig, PredictConfig
from semclip.data import DatabarCrop, Dataset, DatasetError, load_dataset
from semclip.encoder import DualPathEncoder, StageFeatures
from semclip.model import SemclipModel, SupportItem
from semclip.prediction import Prediction
from semclip.prompts import PromptLibrary, load_prompts, text_prototypes

__version__ = "0.1.0"

__all__ = [
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
    "__version__",
    "load_backbone",
    "load_dataset",
    "load_model",
    "load_prompts",
    "save_model",
    "text_prototypes",
]
