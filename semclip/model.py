"""SemclipModel: fit on a few labelled shots, predict class + confidence + mask per image.

The model is the frozen backbone, the trained heads (with the class text prototypes), and the
calibration (τ, α) chosen on the support set; `save`/`load` (artifact.py) keep all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semclip.backbone import Backbone, pretrain_classes
from semclip.config import Calibration, FitConfig, PredictConfig
from semclip.data.databar import DatabarCrop
from semclip.data.dataset import GOOD, Dataset
from semclip.data.images import ImageReadError, LoadedImage, read_image
from semclip.data.masks import MaskError, read_mask
from semclip.data.prefetch import Decoded, DecodedBatch, decode_workers, prefetch_batches
from semclip.drift.embedding import EmbeddingSum
from semclip.encoder import DualPathEncoder
from semclip.feature_cache import FeatureCache, entry_key
from semclip.features import (
    N_DIHEDRAL,
    Features,
    Preprocess,
    auto_batch_size,
    batches,
    dihedral,
    extract_features,
    inference_bytes_per_image,
)
from semclip.heads import SemclipHeads
from semclip.inference import HeadOutputs, run_heads
from semclip.maps import bilinear_matrix
from semclip.membank import PatchMemoryBank
from semclip.postprocess import MaskOutputs, batch_mask_outputs
from semclip.prediction import Prediction
from semclip.prompts import PromptLibrary, load_prompts, text_prototypes
from semclip.train import (
    SupportTensors,
    build_membank,
    calibrate,
    fit_heads,
    good_shot_tau,
)

log = logging.getLogger(__name__)

ImageSource = str | Path | bytes | np.ndarray
Progress = Callable[[int], None]  # called with the number of images just finished


@dataclass(frozen=True)
class ImageScores:
    """Continuous outputs for one image: what evaluation needs (masks are thresholded maps)."""

    uri: str
    sha256: str | None
    full_shape: tuple[int, int]  # (H, W) of the image, databar included
    probs: np.ndarray  # (K,) fused probabilities, model class order
    p_clip: np.ndarray  # (K,) P_clip as calibrated (transformation layers or CLIP's proj)
    p_clip_proj: np.ndarray  # (K,) CLIP's untrained zero-shot probabilities
    p_head: np.ndarray  # (K,) classification head
    score_map: np.ndarray  # (S, S) smoothed defect map of the databar-cropped image

    def full_map(self, databar: DatabarCrop) -> np.ndarray:
        """The defect map at the image's own resolution (H, W), zero on the databar rows."""
        cropped = (databar.cropped_height(self.full_shape[0]), self.full_shape[1])
        rows = bilinear_matrix(self.score_map.shape[0], cropped[0])
        cols = bilinear_matrix(self.score_map.shape[1], cropped[1])
        return databar.undo_mask(rows @ self.score_map.astype(np.float32) @ cols.T, self.full_shape)


@dataclass(frozen=True)
class SupportItem:
    """One labelled support image: a source for `read_image`, its label, optional mask."""

    image: ImageSource
    label: str
    mask: str | Path | np.ndarray | None = None  # None: classification only (or good)
    group: str | None = None  # fold unit for calibration (wafer, site); default: the image
    uri: str | None = None  # recorded in the lineage


@dataclass
class SemclipModel:
    """A fitted SEM-CLIP model (`membank`: the good shots' patches, None in older models)."""

    backbone: Backbone
    heads: SemclipHeads
    classes: tuple[str, ...]  # class order of probabilities; "good" first
    prompts: PromptLibrary
    calibration: Calibration
    preprocess: Preprocess
    fit_config: FitConfig = FitConfig()
    predict_config: PredictConfig = PredictConfig()
    name: str = "semclip-sem"
    version: str = "local"
    lineage: dict[str, Any] = field(default_factory=dict)
    membank: PatchMemoryBank | None = field(default=None, repr=False)
    _encoder: DualPathEncoder | None = field(default=None, repr=False)
    _compiled: Callable[[torch.Tensor], list] | None = field(default=None, repr=False)

    @property
    def good_index(self) -> int:
        return self.classes.index(GOOD)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.model.parameters()).device

    @property
    def encoder(self) -> DualPathEncoder:
        if self._encoder is None:
            self._encoder = DualPathEncoder(self.backbone.model, self.fit_config.n_stages)
        return self._encoder

    def compile_encoder(self, **options: Any) -> None:
        """Run the dual-path encoder through `torch.compile` from now on (prediction and fits).

        Optional: the first batch of each new shape pays the compilation (seconds to minutes);
        `semclip bench --compile` measures what it buys on a given machine.
        """
        self._compiled = torch.compile(self.encoder, **options)

    def inference_batch_size(self, requested: int) -> int:
        """Images per batch: `requested` when > 0, else 16 on CPU, by free memory on CUDA."""
        size = self.preprocess.image_size
        per_image = inference_bytes_per_image(self.encoder, len(self.classes), size)
        return auto_batch_size(self.device, requested, size, per_image)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        backbone: Backbone,
        support: Dataset | Sequence[SupportItem],
        *,
        config: FitConfig | None = None,
        prompts: PromptLibrary | None = None,
        databar: DatabarCrop | None = None,
        name: str = "semclip-sem",
        progress: Progress | None = None,
        cache: FeatureCache | None = None,
    ) -> SemclipModel:
        """Fit heads and calibration on labelled shots (k per class; k = 1 works).

        Defect images without a mask train the classifier only. Raises ValueError when the
        support has no "good" images or a single class. A `cache` shared across fits (and
        predictions) runs the backbone once per image and augmentation.
        """
        started = time.perf_counter()
        config = config or FitConfig()
        config.check()
        databar = databar or DatabarCrop()
        preprocess = Preprocess(backbone.image_size, backbone.mean, backbone.std, databar)
        given = support_items(support)
        support_classes(given)  # labels first: nothing decoded for a bad set
        decoded = decode_support(given, preprocess)
        items = decoded.items
        classes = support_classes(items)
        prompts = prompts or load_prompts()
        device = next(backbone.model.parameters()).device
        text = text_prototypes(
            backbone.model, backbone.tokenizer, prompts, classes, generic=config.generic_prompts
        ).to(device)
        model = cls(
            backbone,
            None,
            classes,
            prompts,
            Calibration(),
            preprocess,
            config,  # type: ignore[arg-type]
            name=name,
        )
        if progress and decoded.skipped:
            progress(len(decoded.skipped))  # read and left out: done, so the bar ends full
        tensors, hashes = model._support_tensors(decoded, progress, cache)
        proj = backbone.model.visual.proj.detach().float()
        good = model.good_index
        clip_classes = model._clip_classes(config)
        calibration = calibrate(
            tensors, text, good, config, proj, preprocess.image_size, device, clip_classes
        )
        history: list[dict[str, float]] = []
        model.heads = fit_heads(tensors, text, good, config, proj, device, history)
        bank = build_membank(tensors, good, config, device) if config.membank else None
        model.membank = bank[0] if bank is not None else None
        if calibration.method == "default":
            tau = good_shot_tau(
                model.heads, tensors, calibration, good, preprocess.image_size, bank
            )
            calibration = replace(calibration, tau=tau)
        model.calibration = calibration
        model.lineage = fit_lineage(items, hashes, config, backbone, time.perf_counter() - started)
        model.lineage["skipped_shots"] = [
            {"uri": uri, "reason": reason} for uri, reason in decoded.skipped
        ]
        model.lineage["training"] = {
            "steps": len(history),
            "last": history[-1] if history else None,
        }
        log.info(
            "fitted %d classes on %d images in %d steps: tau=%.3f alpha=%.2f beta=%.2f "
            "gamma=%.2f region=%.2f on %s (%s)",
            len(classes),
            len(items),
            len(history),
            calibration.tau,
            calibration.alpha,
            calibration.membank_weight,
            calibration.selfsim_weight,
            calibration.region_weight,
            calibration.region_map,
            calibration.method,
        )
        return model

    def _support_tensors(
        self, decoded: DecodedSupport, progress: Progress | None, cache: FeatureCache | None
    ) -> tuple[SupportTensors, list[str | None]]:
        """Run the backbone once per support image and augmentation; cache what training needs.

        Returns the tensors and each image's sha256 (for the lineage).
        """
        n_aug = N_DIHEDRAL if self.fit_config.augment else 1
        items, hashes, has_mask = decoded.items, list(decoded.hashes), decoded.has_mask
        labels = [self.classes.index(item.label) for item in items]
        groups = [
            item.group if item.group is not None else f"image-{i}" for i, item in enumerate(items)
        ]
        stack, mask_stack = decoded.images, decoded.masks  # (n, 3, S, S), (n, S, S)
        size = self.preprocess.image_size
        batch = auto_batch_size(self.device, self.fit_config.feature_batch_size, size)
        feats, targets, image_index, aug_index = [], [], [], []
        for sl in batches(len(items), batch):
            for aug in range(n_aug):
                keys = [entry_key(h, aug) for h in hashes[sl]]
                feats.append(self._features(dihedral(stack[sl], aug), keys, cache))
                targets.append(patch_coverage(dihedral(mask_stack[sl], aug), feats[-1].grid))
                image_index.append(torch.arange(sl.start, sl.stop))
                aug_index.append(torch.full((sl.stop - sl.start,), aug))
            if progress:
                progress(sl.stop - sl.start)
        image_index_t = torch.cat(image_index)
        tensors = SupportTensors(
            feats=Features.cat(feats),
            labels=torch.tensor(labels)[image_index_t],
            patch_target=torch.cat(targets),
            has_mask=torch.tensor(has_mask)[image_index_t],
            image_index=image_index_t,
            aug_index=torch.cat(aug_index),
            masks=mask_stack,
            image_has_mask=torch.tensor(has_mask),
            groups=groups,
        )
        return tensors, hashes

    def _features(
        self,
        images: torch.Tensor,
        keys: list[str | None],
        cache: FeatureCache | None,
        autocast: bool = True,
        on_device: bool = False,
    ) -> Features:
        """Backbone features of a batch, through the cache when one is given.

        `on_device` (prediction without a cache) leaves them where the heads run next.
        """
        if cache is None:
            return extract_features(
                self.encoder,
                images,
                autocast=autocast,
                keep_on_device=on_device,
                forward=self._compiled,
            )
        return cache.get(
            keys,
            lambda missing: extract_features(
                self.encoder, images[missing], autocast=autocast, forward=self._compiled
            ),
        )

    def _clip_classes(self, config: FitConfig) -> torch.Tensor | None:
        """(K,) bool: classes P_clip may vote for (class-aware fusion), None: all of them."""
        if config.class_alpha == "global":
            return None
        known = pretrain_classes(self.backbone)
        return torch.tensor([self.prompts.clip_knows(c, known) for c in self.classes])

    # --------------------------------------------------------------- prediction
    def predict(
        self,
        images: Sequence[ImageSource],
        *,
        uris: Sequence[str] | None = None,
        config: PredictConfig | None = None,
        progress: Progress | None = None,
        cache: FeatureCache | None = None,
        embeddings: EmbeddingSum | None = None,
    ) -> list[Prediction]:
        """Predict every image; an unreadable one gets a row with `error`, never a failed batch.

        The next batches are read, decoded and preprocessed in `config.decode_workers` threads
        while the model runs the current one (`semclip.data.prefetch`).

        ``embeddings``, when given, receives the unit CLS embedding of every image predicted
        (not of failed ones): what the drift summary averages, without a column in the rows.
        """
        config = config or self.predict_config
        uris = (
            list(uris) if uris is not None else [_default_uri(s, i) for i, s in enumerate(images)]
        )
        if len(uris) != len(images):
            raise ValueError(f"{len(images)} images but {len(uris)} uris")
        results: list[Prediction] = []
        for sl, decoded in self._decoded_batches(images, uris, config):
            results.extend(
                self._predict_batch(images[sl], uris[sl], config, cache, decoded, embeddings)
            )
            if progress:
                progress(sl.stop - sl.start)
        return results

    def _decoded_batches(
        self, images: Sequence[ImageSource], uris: Sequence[str], config: PredictConfig
    ) -> Iterator[tuple[slice, DecodedBatch[LoadedImage | Prediction]]]:
        """Batches of decoded, preprocessed inputs, decoded ahead in worker threads."""
        batch = self.inference_batch_size(config.batch_size)

        def decode(i: int) -> Decoded[LoadedImage | Prediction]:
            return self._decode(images[i], uris[i], config)

        return prefetch_batches(
            images,
            list(batches(len(images), batch)),
            decode,
            workers=decode_workers(config.decode_workers),
            pin_memory=self.device.type == "cuda",
        )

    def _decode(
        self, source: ImageSource, uri: str, config: PredictConfig
    ) -> Decoded[LoadedImage | Prediction]:
        """One input read and preprocessed (in a worker thread); failures become its row."""
        item = self._read(source, uri, config)
        if not isinstance(item, LoadedImage):
            return Decoded(item, None)
        try:
            return Decoded(item, self.preprocess.image_tensor(item.pixels))
        except Exception as exc:  # raised again where the batch runs: the same fallback
            return Decoded(item, None, exc)

    def _predict_batch(
        self,
        images: Sequence[ImageSource],
        uris: Sequence[str],
        config: PredictConfig,
        cache: FeatureCache | None = None,
        decoded: DecodedBatch[LoadedImage | Prediction] | None = None,
        embeddings: EmbeddingSum | None = None,
    ) -> list[Prediction]:
        if decoded is None:  # one image again after a failed batch: decode it here
            decoded = self._decode_inline(images, uris, config)
        loaded: list[LoadedImage | Prediction] = [d.item for d in decoded.items]
        ok = [i for i, item in enumerate(loaded) if isinstance(item, LoadedImage)]
        if ok:
            try:
                if decoded.error is not None:
                    raise decoded.error
                oks = [loaded[i] for i in ok]
                outputs = self._heads_on(oks, config, cache, decoded.stacked)
                finite = _finite_rows(outputs)
                good = [j for j, fine in enumerate(finite) if fine]
                masks = self._masks([oks[j] for j in good], outputs, good, config)
            except Exception as exc:  # keep the batch: fall back to one image at a time
                if len(ok) == 1:
                    loaded[ok[0]] = self._failed(
                        uris[ok[0]], f"prediction failed: {exc}", loaded[ok[0]].sha256
                    )
                    return loaded  # type: ignore[return-value]
                for i in ok:  # unreadable rows keep their place
                    loaded[i] = self._predict_batch(
                        [images[i]], [uris[i]], config, cache, embeddings=embeddings
                    )[0]
                return loaded  # type: ignore[return-value]
            probs = outputs.probs.float().cpu()  # one copy for the batch
            by_row = dict(zip(good, masks, strict=True))
            for j, i in enumerate(ok):
                loaded[i] = (
                    self._to_prediction(loaded[i], uris[i], probs[j], by_row[j], config)
                    if j in by_row
                    else self._failed(uris[i], _non_finite(outputs, j), loaded[i].sha256)
                )
            if embeddings is not None and outputs.cls_embedding is not None and good:
                rows = torch.tensor(good, device=outputs.cls_embedding.device)
                embeddings.add(outputs.cls_embedding.index_select(0, rows).float().cpu().numpy())
        return loaded  # type: ignore[return-value]

    def _decode_inline(
        self, images: Sequence[ImageSource], uris: Sequence[str], config: PredictConfig
    ) -> DecodedBatch[LoadedImage | Prediction]:
        from semclip.data.prefetch import collate

        items = [self._decode(src, uri, config) for src, uri in zip(images, uris, strict=True)]
        return collate(items)

    def _masks(
        self, images: list[LoadedImage], out: HeadOutputs, rows: list[int], config: PredictConfig
    ) -> list[MaskOutputs]:
        """Masks, RLE and region statistics of the batch rows `rows`, batched on the device."""
        if not rows:
            return []
        index = torch.tensor(rows, device=out.score_map.device)
        return batch_mask_outputs(
            out.score_map.index_select(0, index).float(),
            out.class_map.index_select(0, index),
            [im.pixels.shape for im in images],
            self.calibration.tau,
            self.preprocess.databar,
            len(self.classes),
            config.min_region_px,
            [self._pixel_size(im, config)[0] for im in images],
        )

    @staticmethod
    def _pixel_size(image: LoadedImage, config: PredictConfig) -> tuple[float | None, str | None]:
        """nm per pixel and where it came from: an explicit setting wins over the file."""
        if config.pixel_size_nm:  # an explicit override (CLI --pixel-size-nm) wins
            return config.pixel_size_nm, "setting"
        return image.pixel_size_nm, image.pixel_size_source

    def _read(
        self, source: ImageSource, uri: str, config: PredictConfig
    ) -> LoadedImage | Prediction:
        try:
            image = read_image(
                source, page=config.tiff_page, name=uri, max_pixels=config.max_image_pixels
            )
            self.preprocess.databar.apply(image.pixels)  # fails clearly when nothing is left
            return image
        except MemoryError:  # past the decoder (e.g. the crop): this image's reason only
            log.warning("skipping %s: out of memory", uri)
            return self._failed(uri, "out of memory reading the image", None)
        except (ImageReadError, ValueError) as exc:
            log.warning("skipping %s: %s", uri, exc)
            return self._failed(uri, str(exc), None)

    def _failed(self, uri: str, error: str, sha256: str | None) -> Prediction:
        return Prediction.failed(uri, error, self.name, self.version, sha256)

    def _heads_on(
        self,
        images: list[LoadedImage],
        config: PredictConfig,
        cache: FeatureCache | None = None,
        x: torch.Tensor | None = None,
    ) -> HeadOutputs:
        """Heads on a batch of decoded images; `x` is their preprocessed stack when prefetched."""
        if x is None:
            x = torch.stack([self.preprocess.image_tensor(im.pixels) for im in images])
        keys = [entry_key(im.sha256, 0, im.page) for im in images]
        with torch.inference_mode():
            feats = self._features(x, keys, cache, config.autocast, on_device=True)
            return run_heads(
                self.heads,
                feats,
                self.calibration,
                self.good_index,
                self.preprocess.image_size,
                membank=self.membank,
            )

    def score(
        self,
        images: Sequence[ImageSource],
        *,
        uris: Sequence[str] | None = None,
        cache: FeatureCache | None = None,
        config: PredictConfig | None = None,
    ) -> list[ImageScores | Prediction]:
        """Continuous outputs (probabilities, defect map) for evaluation; failed images come
        back as failed Predictions in their place."""
        config = config or self.predict_config
        uris = (
            list(uris) if uris is not None else [_default_uri(s, i) for i, s in enumerate(images)]
        )
        out: list[ImageScores | Prediction] = []
        for sl, decoded in self._decoded_batches(images, uris, config):
            if decoded.error is not None:
                raise decoded.error
            loaded = [d.item for d in decoded.items]
            ok = [im for im in loaded if isinstance(im, LoadedImage)]
            heads = self._heads_on(ok, config, cache, decoded.stacked) if ok else None
            j = 0
            for uri, item in zip(uris[sl], loaded, strict=True):
                if isinstance(item, Prediction):
                    out.append(item)
                    continue
                problem = _non_finite(heads, j)
                if problem:
                    out.append(self._failed(uri, problem, item.sha256))
                    j += 1
                    continue
                out.append(
                    ImageScores(
                        uri=uri,
                        sha256=item.sha256,
                        full_shape=item.pixels.shape,
                        probs=heads.probs[j].float().cpu().numpy(),
                        p_clip=heads.p_clip[j].float().cpu().numpy(),
                        p_clip_proj=heads.p_clip_proj[j].float().cpu().numpy(),
                        p_head=heads.p_head[j].float().cpu().numpy(),
                        score_map=heads.score_map[j].float().cpu().numpy(),
                    )
                )
                j += 1
        return out

    def _to_prediction(
        self,
        image: LoadedImage,
        uri: str,
        probs: torch.Tensor,  # (K,) on the host
        masks: MaskOutputs,
        config: PredictConfig,
    ) -> Prediction:
        top = int(probs.argmax())
        pixel_nm, pixel_source = self._pixel_size(image, config)
        disagrees = (top == self.good_index) == (masks.stats.area_px > 0) or (
            top != self.good_index and masks.majority_class not in (None, top)
        )
        return Prediction(
            image_uri=uri,
            image_sha256=image.sha256,
            predicted_class=self.classes[top],
            probabilities={c: float(p) for c, p in zip(self.classes, probs.tolist(), strict=True)},
            anomaly_score=float(1.0 - probs[self.good_index]),
            needs_review=bool(float(probs[top]) < config.review_min_probability or disagrees),
            mask_rle=masks.rle,
            mask_height=int(image.pixels.shape[0]),
            mask_width=int(image.pixels.shape[1]),
            n_regions=masks.stats.n_regions,
            defect_area_px=masks.stats.area_px,
            defect_area_nm2=masks.area_nm2,
            bbox=masks.stats.bbox,
            model_name=self.name,
            model_version=self.version,
            pixel_size_nm=pixel_nm,
            pixel_size_source=pixel_source if pixel_nm is not None else None,
        )


def _finite_rows(out: HeadOutputs) -> list[bool]:
    """Whether each image's probabilities and defect map are all finite (one device sync)."""
    probs = torch.isfinite(out.probs.float()).all(dim=1)
    maps = torch.isfinite(out.score_map.float()).flatten(1).all(dim=1)
    return (probs & maps).cpu().tolist()


def _non_finite(out: HeadOutputs, j: int) -> str | None:
    """Why image ``j``'s outputs cannot be a prediction, or None when they are all finite.

    NaN probabilities have no meaningful argmax (torch gives index 0, "good") and NaN is never
    below the review threshold, so a corrupt model used to write silent "good" rows that
    nobody reviewed; now such an image is an error row and is predicted again on a re-run.
    """
    probs = out.probs[j].float()
    if not bool(torch.isfinite(probs).all()):
        return (
            f"model output is not finite (class probabilities {probs.tolist()}): the model "
            "weights are likely corrupt (check them: semclip verifies their hashes on load) "
            "or the image drives the network out of range; no class is given"
        )
    if not bool(torch.isfinite(out.score_map[j].float()).all()):
        return (
            "model output is not finite (the defect map holds NaN/inf): the model weights "
            "are likely corrupt; no class or mask is given"
        )
    return None


def support_items(support: Dataset | Sequence[SupportItem]) -> list[SupportItem]:
    """Support as SupportItems; a Dataset's samples keep their mask paths and groups."""
    if isinstance(support, Dataset):
        return [
            SupportItem(s.image, s.label, s.mask, s.group, str(s.image)) for s in support.samples
        ]
    return list(support)


@dataclass(frozen=True)
class DecodedSupport:
    """The support images that could be read, as model inputs, and those that could not."""

    items: list[SupportItem]  # the readable ones, in the order given
    images: torch.Tensor  # (n, 3, S, S) model inputs
    masks: torch.Tensor  # (n, S, S) defect masks at the input size (zeros where unknown)
    has_mask: list[bool]  # False: a defect shot without a mask (trains the classifier only)
    hashes: list[str | None]  # each image's sha256 (the lineage)
    skipped: list[tuple[str, str]]  # (image, why) of shots left out


def decode_support(items: list[SupportItem], preprocess: Preprocess) -> DecodedSupport:
    """Decode every support image and mask once; leave out, and name, the ones that fail.

    A shot is precious but one unreadable file (empty, truncated, not an image, a mask of
    another size or that cannot be decoded) must not cost the fit of every other: it is left
    out with a warning naming the file and the reason, and the lineage lists it
    (`skipped_shots`). A class whose every shot was left out is an error naming its files,
    since a fit without it would silently drop a class the engineer confirmed.
    """
    size = preprocess.image_size
    kept: list[SupportItem] = []
    images, masks, has_mask, hashes = [], [], [], []
    skipped: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        name = item.uri or _default_uri(item.image, i)
        try:
            loaded = read_image(item.image, name=item.uri)
            tensor = preprocess.image_tensor(loaded.pixels)
            mask = _support_mask(item, loaded)
            mask_tensor = preprocess.mask_tensor(mask) if mask is not None else None
        except (ImageReadError, ValueError) as exc:
            log.warning("support shot left out of the fit: %s (%s)", name, exc)
            skipped.append((name, str(exc)))
            continue
        kept.append(item)
        images.append(tensor)
        has_mask.append(mask_tensor is not None)
        masks.append(mask_tensor if mask_tensor is not None else torch.zeros(size, size))
        hashes.append(loaded.sha256)
    lost = sorted({item.label for item in items} - {item.label for item in kept})
    if lost:
        names = "; ".join(f"{uri}: {why}" for uri, why in skipped)
        raise ValueError(
            f"every support image of class {', '.join(map(repr, lost))} is unreadable ({names})"
        )
    if not kept:  # only an empty `items`: any lost image loses its class above
        raise ValueError("the support set has no readable image")
    return DecodedSupport(kept, torch.stack(images), torch.stack(masks), has_mask, hashes, skipped)


def support_classes(items: list[SupportItem]) -> tuple[str, ...]:
    """Class order: "good" first, then defect labels sorted; needs good and ≥ 1 defect."""
    labels = {item.label for item in items}
    if GOOD not in labels:
        raise ValueError(
            f"the support set needs '{GOOD}' images (labels present: {sorted(labels)})"
        )
    if len(labels) < 2:
        raise ValueError("the support set needs at least one defect class besides 'good'")
    return (GOOD, *sorted(labels - {GOOD}))


def patch_coverage(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Defect coverage of each patch: (n, S, S) masks → (n, P) fractions in [0, 1]."""
    return F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)


def _support_mask(item: SupportItem, image: LoadedImage) -> np.ndarray | None:
    """The item's mask as bool (H, W); good images without a mask are all-background."""
    if item.mask is None:
        return np.zeros(image.pixels.shape, dtype=bool) if item.label == GOOD else None
    if isinstance(item.mask, np.ndarray):
        if item.mask.shape[:2] != image.pixels.shape:
            name = f"array for {item.uri}" if item.uri else "array of a support image"
            raise MaskError(name, item.mask.shape[:2], image.pixels.shape)  # one wording: HxW
        return item.mask.astype(bool)
    return read_mask(item.mask, image.pixels.shape)


def _default_uri(source: ImageSource, index: int) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"<{'bytes' if isinstance(source, bytes) else 'array'}:{index}>"


def fit_lineage(
    items: list[SupportItem],
    hashes: list[str | None],
    config: FitConfig,
    backbone: Backbone,
    seconds: float,
) -> dict[str, Any]:
    """Which images (by content hash), which seed, which software: enough to audit a model."""
    import open_clip

    import semclip

    shots = [
        {
            "uri": item.uri or _default_uri(item.image, i),
            "sha256": sha,
            "label": item.label,
            "mask": str(item.mask)
            if isinstance(item.mask, str | Path)
            else ("array" if item.mask is not None else None),
            "group": item.group,
        }
        for i, (item, sha) in enumerate(zip(items, hashes, strict=True))
    ]
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "seed": config.seed,
        "shots_per_class": shots_per_class(items),
        "support": shots,
        "backbone": backbone.describe(),
        "random_backbone": backbone.random_weights,
        "fit_seconds": round(seconds, 3),
        "versions": {
            "semclip": semclip.__version__,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
        },
    }


def shots_per_class(items: list[SupportItem]) -> dict[str, int]:
    """Support images per label."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return counts
