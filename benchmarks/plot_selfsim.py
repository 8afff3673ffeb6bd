"""Where the within-image self-similarity map points, one defect image per class, as a figure.

    python benchmarks/plot_selfsim.py --data SET --out selfsim.png [--per-class 1] [--seed 0]

Top row: the image (databar cropped) with its true defect contour in red; bottom row: the
self-similarity anomaly (`semclip.selfsim`, scaled by the set's good images) over it. No
backbone, no shots: the map is what a new tool's images give before anything is learnt, so a
person can see at a glance whether its peaks sit on the defects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semclip.cli.common import databar_for  # noqa: E402
from semclip.data import load_dataset  # noqa: E402
from semclip.data.dataset import GOOD, Sample  # noqa: E402
from semclip.data.images import read_image  # noqa: E402
from semclip.data.masks import read_mask  # noqa: E402
from semclip.selfsim import anomaly, normal_scale, self_similarity  # noqa: E402


def grey(pixels: np.ndarray, crop) -> np.ndarray:  # type: ignore[no-untyped-def]
    return crop.apply(pixels.astype(np.float32))


def distances(pixels: np.ndarray) -> torch.Tensor:
    return self_similarity(torch.from_numpy(np.ascontiguousarray(pixels))[None])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    crop = databar_for(args.data, None, None)
    rng = np.random.default_rng(args.seed)
    goods = [s for s in dataset.samples if s.label == GOOD]
    if not goods:
        raise SystemExit(f"{args.data} has no good images to scale the map by")
    scale = normal_scale(
        torch.stack([distances(grey(read_image(s.image).pixels, crop)) for s in goods])
    )
    shown: list[Sample] = []
    for cls in dataset.classes:
        if cls == GOOD:
            continue
        pool = [s for s in dataset.samples if s.label == cls and s.mask is not None]
        picks = rng.choice(len(pool), min(args.per_class, len(pool)), replace=False)
        shown += [pool[int(i)] for i in picks]
    if not shown:
        raise SystemExit(f"{args.data} has no defect image with a mask")

    fig, axes = plt.subplots(2, len(shown), figsize=(2.2 * len(shown), 4.6), squeeze=False)
    for j, sample in enumerate(shown):
        full = read_image(sample.image).pixels  # read once: pixels and the mask's shape
        pixels = grey(full, crop)
        mask = crop.apply(read_mask(sample.mask, full.shape) != 0)
        amap = anomaly(distances(pixels)[None], scale)[:, None]
        amap = F.interpolate(amap, size=pixels.shape, mode="bilinear", align_corners=False)
        axes[0, j].imshow(pixels, cmap="gray")
        axes[0, j].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        axes[0, j].set_title(sample.label, fontsize=8)
        axes[1, j].imshow(pixels, cmap="gray")
        axes[1, j].imshow(amap[0, 0].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0)
        axes[1, j].contour(mask, levels=[0.5], colors="cyan", linewidths=0.6)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image, true defect", fontsize=8)
    axes[1, 0].set_ylabel("self-similarity map", fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}: {len(shown)} images, scale {scale:.3f} from {len(goods)} good")


if __name__ == "__main__":
    main()
