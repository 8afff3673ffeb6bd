"""The typed result of predicting one image; its record matches the declared Parquet schema."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from semclip import rle


@dataclass(frozen=True)
class Prediction:
    """Class, confidence and mask of one image, or the error that stopped it."""

    image_uri: str
    image_sha256: str | None
    predicted_class: str | None
    probabilities: dict[str, float] | None
    anomaly_score: float | None  # 1 − P(good) of the fused classifier
    needs_review: bool | None  # low top probability, or a map that disagrees with the class
    mask_rle: str | None  # COCO compressed counts at original resolution; None: no defect pixel
    mask_height: int | None
    mask_width: int | None
    n_regions: int | None  # 8-connected defect regions
    defect_area_px: int | None
    defect_area_nm2: float | None  # when the pixel size is known
    bbox: tuple[int, int, int, int] | None  # x, y, w, h of all defect pixels
    model_name: str
    model_version: str
    error: str | None = None
    pixel_size_nm: float | None = None  # nm per pixel used for defect_area_nm2
    pixel_size_source: str | None = None  # "tiff", "png", "jpeg" (file metadata) or "setting"

    @property
    def ok(self) -> bool:
        return self.error is None

    def mask(self) -> np.ndarray | None:
        """Decoded (H, W) bool mask; None for failed images."""
        if self.mask_height is None or self.mask_width is None:
            return None
        if self.mask_rle is None:
            return np.zeros((self.mask_height, self.mask_width), dtype=bool)
        counts = {"size": [self.mask_height, self.mask_width], "counts": self.mask_rle}
        return rle.decode(counts).astype(bool)

    def to_record(self) -> dict[str, Any]:
        """A row of `semclip.io.schema.PREDICTION_SCHEMA`."""
        record = asdict(self)
        if self.bbox is not None:
            x, y, w, h = self.bbox
            record["bbox"] = {"x": x, "y": y, "w": w, "h": h}
        return record

    @classmethod
    def failed(
        cls,
        image_uri: str,
        error: str,
        model_name: str,
        model_version: str,
        image_sha256: str | None = None,
    ) -> Prediction:
        """The row of an image that could not be read or predicted."""
        return cls(
            image_uri,
            image_sha256,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            model_name,
            model_version,
            error,
        )


def fill_pixel_size(prediction: Prediction, pixel_size_nm: float | None, source: str) -> Prediction:
    """``prediction`` with a fallback pixel size where its file carried none.

    The file's own metadata always wins (it describes that very image); a fallback (the
    pipeline's ``SEMCLIP_PIXEL_SIZE_NM``) fills the gap and sets ``defect_area_nm2`` from
    ``defect_area_px``. Failed predictions and unknown sizes are returned unchanged.
    """
    if not prediction.ok or prediction.pixel_size_nm is not None or not pixel_size_nm:
        return prediction
    area = prediction.defect_area_px
    return replace(
        prediction,
        pixel_size_nm=float(pixel_size_nm),
        pixel_size_source=source,
        defect_area_nm2=None if area is None else area * float(pixel_size_nm) ** 2,
    )
