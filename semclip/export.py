"""ONNX export of a fitted model: encoder plus heads, images in, probabilities and map out.

The exported graph takes a normalised batch (B, 3, S, S) (the model's own preprocessing, see
`Preprocess.image_tensor`) and returns, in fp32:

* ``probabilities`` (B, K): the fused class probabilities, model class order, as `predict`
  gives them before its fp16 feature cache (same functions: `class_probabilities`); with a
  region head (`semclip.region_head`, w > 0) times P_region^w, its features read from the
  graph's own map below, its S_self part, or both (the calibration's region_map), bilinearly
  resized to the thumbnail (`predict` reads its smoothed model-resolution map, so the region
  head's share can differ slightly from `predict`'s);
* ``anomaly_map`` (B, g, g): the defect map at feature resolution, one value per patch:
  (1 − β) · (S_v + S_n) / 2 + β · S_knn with the memory bank when the model has one, then
  (1 − γ) · that + γ · S_self with the within-image self-similarity map (resized to g × g).
  Upsampling to the image, smoothing and thresholding at τ stay with the caller (τ and the
  class order are written into the file's metadata).

The exporter is torch's TorchScript one (`torch.onnx.export(dynamo=False)`): offline, no
onnxscript, SDPA decomposed into MatMul/Softmax, the batch axis dynamic. The dynamo exporter
(torch.export + onnxscript) gave the same numbers but took 101 s against 4.8 s for the tiny
model on this 2-core machine, too slow for a test or a casual command.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semclip.encoder import DualPathEncoder
from semclip.features import surgery_maps
from semclip.inference import class_probabilities, patch_clip_map
from semclip.maps import patch_grid
from semclip.model import SemclipModel
from semclip.region_head import (
    THUMB,
    fuse_region,
    reads_self_map,
    region_log_probs,
    region_maps,
    thumbnail,
)
from semclip.selfsim import anomaly as selfsim_anomaly
from semclip.selfsim import self_similarity

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "anomaly_map")


class ExportedSemclip(nn.Module):
    """A fitted model as one fp32 graph: images (B, 3, S, S) → (probabilities, anomaly map)."""

    def __init__(self, model: SemclipModel) -> None:
        super().__init__()
        self.encoder = DualPathEncoder(model.backbone.model, model.fit_config.n_stages, fused=False)
        self.heads = model.heads
        self.calibration = model.calibration
        self.good_index = model.good_index
        self.membank = model.membank
        self.beta = float(model.calibration.membank_weight) if model.membank is not None else 0.0
        self.gamma = float(model.calibration.selfsim_weight)
        self.grid = int(self.encoder.grid)  # a constant, so the resize exports as ONNX Resize
        self.selfsim_scale = float(model.calibration.selfsim_scale)
        side = min(model.preprocess.image_size, THUMB)
        self.thumb_side = side
        self.fill_steps = 2 * side  # a traced graph cannot stop when the region stops growing

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, vv) as `extract_features` makes them, kept in fp32."""
        stages = self.encoder(images)
        ln_post = self.encoder.visual.ln_post
        tokens = torch.stack([ln_post(s.vanilla) for s in stages], dim=1)
        vv = torch.stack([s.vv for s in stages], dim=1)
        return tokens, vv

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, vv = self.features(images)
        probs = class_probabilities(self.heads, tokens, vv, self.calibration)[0]
        surgery = surgery_maps(vv, self.heads.text, self.good_index, self.calibration.surgery_scale)
        amap = patch_clip_map(self.heads, tokens, surgery, self.good_index)  # (B, P)
        if self.membank is not None and self.beta > 0:
            knn = membank_anomaly(self.membank, self.membank.patch_tokens(tokens, vv))
            amap = (1.0 - self.beta) * amap + self.beta * knn
        amap = patch_grid(amap[..., None])[:, 0]  # (B, g, g)
        region = self.calibration.region_head is not None and self.calibration.region_weight > 0
        on_self = region and reads_self_map(self.calibration.region_map)
        own = None
        if self.gamma > 0 or on_self:
            own = selfsim_anomaly(self_similarity(images), self.selfsim_scale)  # (B, 15, 15)
            own = F.interpolate(own[:, None], size=(self.grid, self.grid), mode="bilinear")[:, 0]
        if own is not None and self.gamma > 0:
            amap = (1.0 - self.gamma) * amap + self.gamma * own
        if region:
            side = (self.thumb_side, self.thumb_side)
            sources = region_maps(self.calibration.region_map, amap, own) or []
            fine = [F.interpolate(m[:, None], size=side, mode="bilinear")[:, 0] for m in sources]
            log_q = region_log_probs(self.calibration, thumbnail(images), fine, self.fill_steps)
            if log_q is not None:
                probs = fuse_region(probs, log_q, self.calibration.region_weight)
        return probs, amap


def membank_anomaly(bank: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """`PatchMemoryBank.anomaly` without query chunks (a static graph): (B, m, P, D) → (B, P)."""
    q = F.normalize(patches.float(), dim=-1)  # (B, m, P, D)
    sim = torch.einsum("bmpd,mnd->bmpn", q, bank.bank)  # (B, m, P, M)
    k = min(bank.k, bank.bank.shape[1])
    dist = (1.0 - sim.topk(k, dim=-1).values).clamp_min(0.0).mean(dim=-1)  # (B, m, P)
    z = dist / bank.scale[None, :, None]
    return (z / (1.0 + z)).mean(dim=1)


@dataclass(frozen=True)
class ExportReport:
    """What `semclip export --onnx` prints: agreement with eager and both throughputs."""

    path: Path
    max_abs_prob: float
    max_abs_map: float
    eager_img_s: float
    onnx_img_s: float
    batch: int
    threads: int


def export_onnx(model: SemclipModel, out: str | Path, *, batch: int = 2) -> Path:
    """Write `model` as ONNX to `out` (fp32, CPU, dynamic batch); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedSemclip(model).eval()
    size = model.preprocess.image_size
    example = torch.zeros(batch, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module,
            (example,),
            str(out),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}},
            opset_version=OPSET,
        )
    _write_metadata(out, model)
    return out


def _write_metadata(path: Path, model: SemclipModel) -> None:
    """Class order, τ, preprocessing and the random-weights flag, in the file itself."""
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "classes": json.dumps(list(model.classes)),
        "tau": str(model.calibration.tau),
        "preprocess": json.dumps(model.preprocess.to_dict()),
        "model_name": model.name,
        "model_version": model.version,
        "backbone": model.backbone.describe(),
        "random_backbone": str(bool(model.backbone.random_weights)).lower(),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session (`threads` intra-op threads; default torch's count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_and_time(
    model: SemclipModel, path: str | Path, images: torch.Tensor, repeats: int = 3
) -> ExportReport:
    """Agreement of the ONNX file with the eager fp32 module on `images`, and both img/s."""
    module = ExportedSemclip(model).eval()
    session = onnx_session(path)
    with torch.inference_mode():
        want = [t.numpy() for t in module(images)]
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    n = images.shape[0]

    def eager() -> None:
        with torch.inference_mode():
            module(images)

    def onnx_run() -> None:
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})

    return ExportReport(
        path=Path(path),
        max_abs_prob=float(np.abs(got[0] - want[0]).max()),
        max_abs_map=float(np.abs(got[1] - want[1]).max()),
        eager_img_s=n / _best_seconds(eager, repeats),
        onnx_img_s=n / _best_seconds(onnx_run, repeats),
        batch=n,
        threads=torch.get_num_threads(),
    )


def _best_seconds(work, repeats: int) -> float:
    work()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best
