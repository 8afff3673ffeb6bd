"""`semclip bench`: throughput and peak memory of encoder, prediction and fine-tuning.

All phases run in one process on the same in-memory synthetic SEM images, so their ratios are
comparable: (a) open_clip's plain `encode_image`, (b) the dual-path encoder, (c) the full
`SemclipModel.predict` (decode, preprocess, encoder, heads, maps, masks, RLE), (d) fine-tuning
on `shots × classes` shots with and without the 8 flips/rotations, beside a bare dual-path
forward over the same (augmented) shots. Model loading is timed apart and in no ratio.

Peak memory: on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`); on CPU the
process RSS sampled every 2 ms during the phase (torch allocates outside Python, so tracemalloc
sees none of it, and `getrusage`'s high-water mark never goes down between phases).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from semclip.backbone import Backbone, load_backbone
from semclip.config import FitConfig, PredictConfig
from semclip.data.databar import DatabarCrop
from semclip.encoder import DualPathEncoder
from semclip.eval.encoded import Progress, no_progress
from semclip.features import N_DIHEDRAL, Preprocess, autocast_context, batches, dihedral
from semclip.model import SemclipModel, SupportItem
from semclip.synth import LABELS, render_sample, sample_rng

log = logging.getLogger(__name__)

BENCH_SEED = 20240611  # synthetic images of the benchmark (any fixed value)


@dataclass(frozen=True)
class Phase:
    """One timed phase."""

    name: str
    items: int  # images (or augmented shots) processed
    seconds: float
    peak_mb: float  # CUDA: allocator peak; CPU: peak RSS during the phase
    delta_mb: float  # peak above the phase's start

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    backbone: str  # Backbone.describe()
    device: str
    autocast: bool
    batch_size: int
    model_size: int  # S
    image_size: int  # side of the synthetic input images
    threads: int
    load_seconds: float
    phases: dict[str, Phase]

    def ratios(self) -> dict[str, float]:
        """Time-per-item ratios: b/a, c/a, and each fine-tuning over its own backbone pass."""
        p = self.phases

        def per_item(name: str) -> float:
            return p[name].seconds / p[name].items

        return {
            "b/a": per_item("dual_path") / per_item("encode_image"),
            "c/a": per_item("predict") / per_item("encode_image"),
            "d_aug/forward_aug": p["finetune_aug"].seconds / p["forward_aug"].seconds,
            "d_plain/forward_plain": p["finetune_plain"].seconds / p["forward_plain"].seconds,
        }


class PeakMemory:
    """Context manager measuring a phase's peak memory (see the module docstring)."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return max(0, self.peak - self.start) / 2**20


def rss_bytes() -> int:
    """Resident set size now (Linux /proc); the process high-water mark elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(name: str, items: int, device: torch.device, work: Callable[[], Any]) -> Phase:
    """Run `work()` once and measure it (CUDA work is synchronised before the clock stops)."""
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    log.info("%s: %d items in %.2f s", name, items, seconds)
    return Phase(name, items, seconds, mem.peak_mb, mem.delta_mb)


def synthetic_images(
    n: int, size: int, labels: tuple[str, ...], offset: int = 0
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image, mask, label) SEM-like images cycling over `labels`, without a databar."""
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        rng = sample_rng(BENCH_SEED, label, offset + i)
        sample = render_sample(label, rng, size=size, databar="none")
        out.append((sample.image, sample.mask, label))
    return out


@dataclass(frozen=True)
class BenchData:
    """The in-memory inputs every phase shares."""

    test_arrays: list[np.ndarray]  # (H, W) uint8 images for predict
    test_x: torch.Tensor  # (n, 3, S, S) the same, preprocessed, for the encoders
    shots: list[SupportItem]  # shots × classes labelled images with masks
    shots_x: torch.Tensor  # (n_shots, 3, S, S) preprocessed shots


def bench_data(
    bb: Backbone, n_images: int, shots: int, n_classes: int, image_size: int
) -> BenchData:
    """Synthetic SEM images for (a)-(c) and shots for (d), preprocessed once (outside timing)."""
    labels = LABELS[: max(2, min(n_classes, len(LABELS)))]
    test = synthetic_images(n_images, image_size, labels, offset=10_000)
    support = synthetic_images(shots * len(labels), image_size, labels)
    prep = Preprocess(bb.image_size, bb.mean, bb.std, DatabarCrop())

    def stack(images: list[tuple[np.ndarray, np.ndarray, str]]) -> torch.Tensor:
        return torch.stack(
            [prep.image_tensor(im.astype(np.float32) / 255.0) for im, _, _ in images]
        )

    return BenchData(
        [im for im, _, _ in test],
        stack(test),
        [SupportItem(im, label, mask) for im, mask, label in support],
        stack(support),
    )


def run_bench(
    backbone: str = "semclip-tiny",
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 8,
    n_images: int = 64,
    shots: int = 10,
    n_classes: int = 7,
    image_size: int = 256,
    fit_config: FitConfig | None = None,
    progress: Progress = no_progress,
) -> BenchResult:
    """Load the backbone (timed apart), then measure phases (a)-(d) on the same images."""
    start = time.perf_counter()
    bb = load_backbone(backbone, pretrained, device)
    load_seconds = time.perf_counter() - start
    dev = next(bb.model.parameters()).device
    data = bench_data(bb, n_images, shots, n_classes, image_size)
    config = replace(fit_config or FitConfig(), feature_batch_size=batch_size)
    encoder = DualPathEncoder(bb.model, config.n_stages)
    _warm_up(bb, encoder, data.test_x[:batch_size], dev)
    phases, model = finetune_phases(bb, encoder, data, config, progress)
    phases.update(inference_phases(bb, encoder, model, data, batch_size, progress))
    return BenchResult(
        backbone=bb.describe(),
        device=str(dev),
        autocast=dev.type == "cuda",
        batch_size=batch_size,
        model_size=bb.image_size,
        image_size=image_size,
        threads=torch.get_num_threads(),
        load_seconds=load_seconds,
        phases=phases,
    )


def finetune_phases(
    bb: Backbone,
    encoder: DualPathEncoder,
    data: BenchData,
    config: FitConfig,
    progress: Progress,
) -> tuple[dict[str, Phase], SemclipModel]:
    """(d): full fits (backbone over every shot × augmentation, heads, CV calibration), each
    beside the bare dual-path forward over the same shots; returns the augmented model."""
    dev = next(bb.model.parameters()).device
    batch = config.feature_batch_size
    models: dict[bool, SemclipModel] = {}
    phases: dict[str, Phase] = {}
    for augment, suffix, n_aug in ((True, "aug", N_DIHEDRAL), (False, "plain", 1)):
        n = len(data.shots) * n_aug

        def fit(augment: bool = augment) -> None:
            with _counter(progress, len(data.shots), f"(d) fit, augment={augment}") as update:
                fit_config = replace(config, augment=augment)
                models[augment] = SemclipModel.fit(
                    bb, data.shots, config=fit_config, progress=update
                )

        def forward(n_aug: int = n_aug) -> None:
            _forward(encoder, data.shots_x, batch, dev, n_aug, progress)

        phases[f"finetune_{suffix}"] = timed(f"finetune_{suffix}", n, dev, fit)
        phases[f"forward_{suffix}"] = timed(f"forward_{suffix}", n, dev, forward)
    return phases, models[True]


def inference_phases(
    bb: Backbone,
    encoder: DualPathEncoder,
    model: SemclipModel,
    data: BenchData,
    batch_size: int,
    progress: Progress,
) -> dict[str, Phase]:
    """(a) encode_image, (b) dual path, (c) predict, on the same test images."""
    dev = next(bb.model.parameters()).device
    n = len(data.test_arrays)
    config = PredictConfig(batch_size=batch_size)
    model.predict(data.test_arrays[:batch_size], config=config)  # warm-up of the heads' path

    def predict() -> None:
        with _counter(progress, n, "(c) predict") as update:
            model.predict(data.test_arrays, config=config, progress=update)

    return {
        "encode_image": timed(
            "encode_image",
            n,
            dev,
            lambda: _encode_image(bb, data.test_x, batch_size, dev, progress),
        ),
        "dual_path": timed(
            "dual_path",
            n,
            dev,
            lambda: _forward(encoder, data.test_x, batch_size, dev, 1, progress),
        ),
        "predict": timed("predict", n, dev, predict),
    }


@contextmanager
def _counter(progress: Progress, total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """An `update(n)` callback driving a tqdm-like `progress` wrapper (for library callbacks)."""
    steps = iter(progress(range(total), total=total, desc=desc, leave=False))

    def update(n: int) -> None:
        for _ in range(n):
            next(steps, None)

    yield update
    for _ in steps:  # finish (and close) the bar
        pass


def _warm_up(bb: Backbone, encoder: DualPathEncoder, x: torch.Tensor, dev: torch.device) -> None:
    """One batch through both encoders: first-call costs stay out of every phase."""
    with torch.inference_mode(), autocast_context(dev):
        bb.model.encode_image(x.to(dev))
        encoder(x.to(dev))


def _encode_image(
    bb: Backbone, x: torch.Tensor, batch_size: int, dev: torch.device, progress: Progress
) -> None:
    """(a) open_clip's own image tower, batch by batch (input copy to the device included)."""
    with torch.inference_mode(), autocast_context(dev):
        for sl in _bar(progress, len(x), batch_size, "(a) encode_image"):
            bb.model.encode_image(x[sl].to(dev))


def _forward(
    encoder: DualPathEncoder,
    x: torch.Tensor,
    batch_size: int,
    dev: torch.device,
    n_aug: int,
    progress: Progress,
) -> None:
    """The bare dual-path forward over `x` under `n_aug` flips/rotations (no cache, no heads)."""
    with torch.inference_mode(), autocast_context(dev):
        for sl in _bar(progress, len(x), batch_size, f"dual-path ×{n_aug}"):
            for aug in range(n_aug):
                encoder(dihedral(x[sl], aug).to(dev))


def _bar(progress: Progress, n: int, batch_size: int, desc: str) -> Iterable[slice]:
    return progress(batches(n, batch_size), total=-(-n // batch_size), desc=desc, leave=False)


def format_bench(result: BenchResult) -> str:
    """The table `semclip bench` prints."""
    p = result.phases
    rows = [
        ("(a) open_clip encode_image", p["encode_image"], "img"),
        ("(b) DualPathEncoder", p["dual_path"], "img"),
        ("(c) SemclipModel.predict (maps, masks, RLE)", p["predict"], "img"),
        ("(d) fine-tune, 8× augmented shots", p["finetune_aug"], "shot×aug"),
        ("    bare dual-path forward, same shots ×8", p["forward_aug"], "shot×aug"),
        ("(d) fine-tune, no augmentation", p["finetune_plain"], "shot"),
        ("    bare dual-path forward, same shots", p["forward_plain"], "shot"),
    ]
    mem = "peak MB (CUDA allocator)" if result.device.startswith("cuda") else "peak RSS MB"
    lines = [
        f"semclip bench: {result.backbone}",
        f"device {result.device} (autocast {'bf16/fp16' if result.autocast else 'off'}), "
        f"{result.threads} CPU threads, batch {result.batch_size}, model input "
        f"{result.model_size} px, synthetic SEM images {result.image_size} px",
        f"model load: {result.load_seconds:.2f} s (timed apart, in no ratio)",
        "",
        f"{'phase':<46} {'items':>6} {'seconds':>9} {'items/s':>9} {mem:>14} {'(Δ MB)':>9}",
    ]
    for name, phase, _unit in rows:
        lines.append(
            f"{name:<46} {phase.items:>6} {phase.seconds:>9.3f} {phase.per_second:>9.1f} "
            f"{phase.peak_mb:>14.0f} {phase.delta_mb:>9.0f}"
        )
    r = result.ratios()
    lines += [
        "",
        f"b/a = {r['b/a']:.2f}   (dual path vs plain encoder; ViT-B-16-plus-240 CPU target ≤ 1.2)",
        f"c/a = {r['c/a']:.2f}   (full predict vs plain encoder; target ≤ 1.35)",
        f"d/backbone, augmented = {r['d_aug/forward_aug']:.2f}   (target ≤ 1.5)",
        f"d/backbone, plain     = {r['d_plain/forward_plain']:.2f}",
    ]
    return "\n".join(lines)
