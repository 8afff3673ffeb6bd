"""Where few-shot classification is lost on a data set: in finding the defect, or in naming it.

    python benchmarks/diagnose_transfer.py --data SET --backbone local-dir:BACKBONE \\
        --shots 2,10 --seeds 3

On the splits `semclip eval` draws (same k, same seeds), it fits `semclip` and, over the
*defect* test images only (the defect classes among themselves), prints:

- `semclip`: accuracy of the fitted model's probabilities with "good" left out;
- region hits: how often the peak region of the predicted defect map touches the true mask;
- descriptors, true region: a logistic regression on `semclip.regions.region_descriptors`
  (size, elongation, contrast: no backbone feature at all) of the true masks, support and test.
  This is an oracle (it reads the test masks): what naming the defect is worth once it is found;
- descriptors, predicted region: the same regression on the predicted regions, support and test.

If the oracle is far above `semclip` and the hit rate is low, the backbone's patch features are
what loses the class: they do not localise the defect, so neither the head nor the descriptors
see it. Mean ± sample std over seeds. Needs a set with masks for its defect images.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semclip import load_backbone  # noqa: E402
from semclip.cli.common import add_fit_options, databar_for  # noqa: E402
from semclip.config import FitConfig  # noqa: E402
from semclip.data import load_dataset  # noqa: E402
from semclip.data.databar import DatabarCrop  # noqa: E402
from semclip.data.dataset import GOOD, Dataset, Sample  # noqa: E402
from semclip.data.images import read_image  # noqa: E402
from semclip.data.masks import read_mask  # noqa: E402
from semclip.eval.protocol import plan_splits  # noqa: E402
from semclip.feature_cache import FeatureCache  # noqa: E402
from semclip.features import Preprocess  # noqa: E402
from semclip.model import ImageScores, SemclipModel  # noqa: E402
from semclip.regions import region_descriptors  # noqa: E402

ROWS = ("semclip", "region hits", "descriptors, true region", "descriptors, predicted region")


def peak_region(score_map: np.ndarray) -> np.ndarray:
    """The connected region around the map's maximum, above half-way from median to peak."""
    peak, floor = float(score_map.max()), float(np.median(score_map))
    above = score_map >= peak - 0.5 * (peak - floor)
    labelled, _ = ndimage.label(above, structure=np.ones((3, 3), bool))
    y, x = np.unravel_index(int(score_map.argmax()), score_map.shape)
    return labelled == labelled[y, x]


def descriptor_accuracy(
    train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]
) -> float:
    """Accuracy of a logistic regression on standardised descriptors: few shots, ten numbers
    of different units, so scaling matters and a strong prior (C = 1) keeps it from overfitting."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    clf.fit(train, y_train)
    return float(np.mean(clf.predict(test) == np.array(y_test)))


class Pixels:
    """Grey images and true masks, read once for all splits."""

    def __init__(self) -> None:
        self._images: dict[Path, np.ndarray] = {}
        self._masks: dict[Path, np.ndarray] = {}

    def image(self, sample: Sample) -> np.ndarray:
        if sample.image not in self._images:
            self._images[sample.image] = read_image(sample.image).pixels.astype(np.float64)
        return self._images[sample.image]

    def mask(self, sample: Sample) -> np.ndarray:
        if sample.image not in self._masks:
            assert sample.mask is not None
            shape = self.image(sample).shape
            self._masks[sample.image] = read_mask(sample.mask, shape) != 0
        return self._masks[sample.image]


def defect_samples(part: Dataset) -> list[Sample]:
    """Defect images with a true mask: the only ones on which finding can be told from naming."""
    return [s for s in part.samples if s.label != GOOD and s.mask is not None]


def diagnose_split(
    model: SemclipModel,
    support_set: Dataset,
    test_set: Dataset,
    pixels: Pixels,
    cache: FeatureCache,
    databar: DatabarCrop,
) -> dict[str, float]:
    """The four `ROWS` on one split's defect images (fractions in [0, 1])."""
    support, test = defect_samples(support_set), defect_samples(test_set)
    both, n = support + test, len(support)
    scores = model.score([s.image for s in both], cache=cache)
    if not all(isinstance(sc, ImageScores) for sc in scores):
        raise SystemExit("an image of the set could not be scored: see the log above")
    defect = [c != GOOD for c in model.classes]
    named = [model.classes[int(np.argmax(np.where(defect, sc.probs, -np.inf)))] for sc in scores]
    regions = [peak_region(sc.full_map(databar)) for sc in scores]
    true_desc = np.array([region_descriptors(pixels.image(s), pixels.mask(s)) for s in both])
    pred_desc = np.array(
        [region_descriptors(pixels.image(s), r) for s, r in zip(both, regions, strict=True)]
    )
    y_sup, y_test = [s.label for s in support], [s.label for s in test]
    hits = [(pixels.mask(s) & r).any() for s, r in zip(test, regions[n:], strict=True)]
    return {
        ROWS[0]: float(np.mean(np.array(named[n:]) == np.array(y_test))),
        ROWS[1]: float(np.mean(hits)),
        ROWS[2]: descriptor_accuracy(true_desc[:n], y_sup, true_desc[n:], y_test),
        ROWS[3]: descriptor_accuracy(pred_desc[:n], y_sup, pred_desc[n:], y_test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", required=True, help="open_clip name or local-dir:PATH")
    parser.add_argument("--pretrained", default=None, help="hub tag or checkpoint; none: random")
    parser.add_argument("--shots", default="2,10")
    parser.add_argument("--seeds", type=int, default=3)
    add_fit_options(parser)
    args = parser.parse_args()
    try:
        fit_config = FitConfig().with_overrides(args.fit)
    except ValueError as exc:
        parser.error(str(exc))

    dataset = load_dataset(args.data)
    backbone = load_backbone(args.backbone, pretrained=args.pretrained)
    databar = databar_for(args.data, None, None)
    preprocess = Preprocess(backbone.image_size, backbone.mean, backbone.std, databar)
    cache = FeatureCache(backbone, preprocess, 4, folder=None, memory=True)
    plan = plan_splits(dataset, [int(k) for k in args.shots.split(",")], range(args.seeds))

    pixels = Pixels()
    results: dict[tuple[int, str], list[float]] = defaultdict(list)
    for split in plan.splits:
        model = SemclipModel.fit(
            backbone, split.support, config=fit_config, databar=databar, cache=cache
        )
        measured = diagnose_split(model, split.support, split.test, pixels, cache, databar)
        for row, value in measured.items():
            results[split.shots, row].append(value)
        line = ", ".join(f"{row} {100 * value:.1f}" for row, value in measured.items())
        print(f"{split.shots}-shot seed {split.seed}: {line}", flush=True)

    shots = sorted({k for k, _ in results})
    n_classes = len([c for c in dataset.classes if c != GOOD])
    print(
        f"\ndefect test images only, {n_classes} defect classes "
        f"(chance {100 / n_classes:.1f} %); mean ± std over {args.seeds} seeds"
    )
    print("| measure | " + " | ".join(f"{k}-shot" for k in shots) + " |")
    print("|---|" + "---|" * len(shots))
    for row in ROWS:
        cells = [results[k, row] for k in shots]
        std = [np.std(c, ddof=1) if len(c) > 1 else 0.0 for c in cells]
        print(
            f"| {row} | "
            + " | ".join(
                f"{100 * np.mean(c):.1f} ± {100 * s:.1f}" for c, s in zip(cells, std, strict=True)
            )
            + " |"
        )


if __name__ == "__main__":
    main()
