"""Label-free adaptation (`semclip pretrain --unlabeled`): self-distillation maths, the
unlabelled sources and their bad files, resume, export, the text tower kept, transductive eval.

CPU, the tiny config, 64 px synthetic images and a few steps per run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semclip import DualPathEncoder, load_backbone
from semclip.cli import main
from semclip.data import load_dataset
from semclip.io.bucket import open_bucket
from semclip.pretrain import PretrainConfig, pretrain
from semclip.pretrain.config import SSLConfig
from semclip.pretrain.overlap import (
    UNLABELED_IMAGES,
    read_unlabeled_images,
    transductive_note,
    unlabeled_overlap,
)
from semclip.pretrain.ssl import (
    SelfDistillation,
    Views,
    block_masks,
    cls_distillation,
    masked_patch_distillation,
    resized_positions,
    teacher_momentum,
    teacher_temperature,
    trunk_tokens,
    vit_embed,
)
from semclip.pretrain.ssl_step import collapse_reason, describe_indicators
from semclip.pretrain.towers import create_towers
from semclip.pretrain.unlabeled import DateRange, load_unlabeled
from semclip.synth import generate_dataset

pytest_plugins = ["conftest_storage"]  # s3_endpoint (moto)

TINY = PretrainConfig(
    model="semclip-tiny",
    steps=6,
    batch_size=8,
    lr=1e-3,
    warmup_steps=2,
    log_every=1,
    checkpoint_every=2,
    cpu_bf16=False,  # fp32: the same numbers on every CPU
    ssl=SSLConfig(objective="distill", prototypes=64, head_hidden=64, head_bottleneck=32),
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unlabeled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 synthetic images (seed 61, used nowhere else); their labels are never read."""
    out = tmp_path_factory.mktemp("unl") / "data"
    generate_dataset(out, counts={"good": 20, "particle": 10, "scratch": 10}, seed=61, size=64)
    return out / "images"


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lab") / "data"
    return generate_dataset(out, counts={"good": 6, "particle": 3, "scratch": 3}, seed=62, size=64)


@pytest.fixture(scope="module")
def finished(unlabeled_dir: Path, labelled_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sslrun")
    result = pretrain(
        TINY,
        work_dir=root / "work",
        out_dir=root / "bb",
        unlabeled=unlabeled_dir,
        zeroshot_data=labelled_dir,
        progress=False,
    )
    return result


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ the maths
@pytest.mark.slow
@pytest.mark.parametrize("name", ["semclip-tiny", "semclip-sem-small"])
def test_vit_embed_matches_the_encoder_and_masks_only_masked_tokens(name: str) -> None:
    towers = create_towers(PretrainConfig(model=name))
    visual = towers.model.visual.eval()
    size, grid = towers.image_size, towers.grid
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = vit_embed(visual, images)
        golden = DualPathEncoder(towers.model, n_stages=1).embed(images)
        torch.testing.assert_close(plain, golden)
        mask = torch.zeros(2, grid * grid, dtype=torch.bool)
        mask[0, :5] = True
        token = torch.full((plain.shape[-1],), 3.0)
        masked = vit_embed(visual, images, mask, token)
        changed = (masked - plain).abs().amax(-1) > 1e-6  # (2, 1+P)
        assert changed[0, 1:6].all() and not changed[0, 6:].any() and not changed[1].any()
        local = images[:, :, : size // 2, : size // 2]
        tokens = trunk_tokens(visual, local)  # position embedding resized for the crop
        assert tokens.shape == (2, 1 + (grid // 2) ** 2, plain.shape[-1])
        pos = resized_positions(visual, grid, grid)
        assert pos is visual.positional_embedding  # own size: untouched


def test_block_masks_cover_the_requested_share() -> None:
    cfg = SSLConfig(mask_prob=1.0, mask_ratio_min=0.3, mask_ratio_max=0.5)
    masks = block_masks(64, 10, cfg, torch.Generator().manual_seed(0))
    share = masks.float().mean(1)
    assert masks.shape == (64, 100)
    assert share.min() >= 0.3 and share.max() <= 0.75  # the last block may overshoot a little
    none = block_masks(8, 10, replace(cfg, mask_prob=0.0), torch.Generator().manual_seed(0))
    assert not none.any()


def test_distillation_terms_on_known_inputs() -> None:
    k = 4
    uniform = torch.full((2, 3, k), 1 / k)  # 2 teacher views, batch 3
    logits = torch.zeros(3, 3, k)  # 3 student views
    assert math.isclose(float(cls_distillation(uniform, logits)), math.log(k), rel_tol=1e-6)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    teacher = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # the 2 masked tokens
    student = torch.log(torch.tensor([[0.5, 0.5, 1e-9, 1e-9], [0.25, 0.25, 0.25, 0.25]]))
    expected = (math.log(2) + math.log(4)) / 2  # one view with two masked patches
    got = float(masked_patch_distillation(teacher, student, mask))
    assert math.isclose(got, expected, rel_tol=1e-5)
    empty = masked_patch_distillation(teacher[:0], student[:0], torch.zeros(2, 3, dtype=bool))
    assert float(empty) == 0.0


def test_schedules_and_collapse_rules() -> None:
    cfg = SSLConfig()
    assert teacher_momentum(0, 100, cfg) == pytest.approx(0.996)
    assert teacher_momentum(99, 100, cfg) == pytest.approx(1.0)
    assert teacher_temperature(0, 100, cfg) == pytest.approx(0.04)
    assert teacher_temperature(50, 100, cfg) == pytest.approx(cfg.teacher_temp)
    healthy = {"teacher_entropy": 0.5, "teacher_marginal_entropy": 0.8, "patch_std": 0.05}
    assert collapse_reason(healthy, 0.05, cfg) is None
    assert "uniform" in collapse_reason({**healthy, "teacher_entropy": 0.999}, 0.05, cfg)
    assert "one prototype" in collapse_reason(
        {**healthy, "teacher_marginal_entropy": 0.01}, 0.05, cfg
    )
    assert "std" in collapse_reason({**healthy, "patch_std": 0.001}, 0.05, cfg)
    features = {"loss_ssl_cls": 0.2, "loss_ssl_patch": 0.1, "patch_std": 0.05}  # no softmax
    assert collapse_reason(features, 0.05, cfg) is None
    assert "std" in collapse_reason({**features, "patch_std": 0.001}, 0.05, cfg)
    assert describe_indicators(features, cfg.prototypes).endswith("patch std 0.0500")


@pytest.mark.slow
def test_teacher_follows_the_student_by_ema_and_exports_the_trunk_only() -> None:
    towers = create_towers(PretrainConfig(model="semclip-tiny"))
    visual = towers.model.visual
    ssl = SelfDistillation(
        visual, SSLConfig(objective="distill", prototypes=16, head_hidden=32, head_bottleneck=8)
    )
    with torch.no_grad():
        for p in visual.parameters():
            p.add_(1.0)
    before = ssl.teacher.conv1.weight.clone()
    ssl.update_teacher(visual, 0.9)
    torch.testing.assert_close(ssl.teacher.conv1.weight, 0.9 * before + 0.1 * visual.conv1.weight)
    proj = visual.proj.clone()
    ssl.export_trunk(visual)
    torch.testing.assert_close(visual.conv1.weight, ssl.teacher.conv1.weight)
    assert torch.equal(visual.proj, proj)  # ln_post/proj stay the student's


@pytest.mark.slow  # a training run
def test_ssl_loss_decreases_against_a_fixed_teacher(unlabeled_dir: Path, tmp_path: Path) -> None:
    """Frozen teacher and centre: the student must learn to match it within a few steps."""
    fixed = replace(TINY.ssl, momentum_start=1.0, center_momentum=1.0, teacher_temp_warmup=0.0)
    config = replace(TINY, steps=16, checkpoint_every=16, ssl=replace(fixed, mask_prob=1.0))
    result = pretrain(
        config,
        work_dir=tmp_path / "w",
        out_dir=tmp_path / "b",
        unlabeled=unlabeled_dir,
        progress=False,
    )
    loss = [h["loss_ssl"] for h in result.history]
    assert np.mean(loss[-4:]) < np.mean(loss[:4])


@pytest.mark.slow  # a training run
def test_feature_prediction_loss_decreases_and_its_teacher_follows_the_trunk(
    unlabeled_dir: Path, tmp_path: Path
) -> None:
    """The masked-feature objective: a dense target, so its loss falls within a few steps."""
    features = replace(TINY.ssl, objective="features", momentum_start=1.0, mask_prob=1.0)
    config = replace(TINY, steps=16, checkpoint_every=16, ssl=features)
    result = pretrain(
        config, work_dir=tmp_path / "w", out_dir=tmp_path / "b", unlabeled=unlabeled_dir,
        progress=False,
    )  # fmt: skip
    loss = [h["loss_ssl_patch"] for h in result.history]
    assert np.mean(loss[-4:]) < np.mean(loss[:4])
    assert result.collapsed is None and result.finished
    card = (result.backbone_dir / "MODEL_CARD.md").read_text()
    assert "objective: masked-feature prediction" in card  # the objective that ran, no other
    assert "iBOT" not in card and "prototypes" not in card and "nan" not in card
    assert "teacher entropy" not in card  # no softmax here: nothing to report, not "nan"
    line = describe_indicators(result.history[-1], features.prototypes)
    assert "nan" not in line and "patch std" in line
    assert not {"teacher_entropy", "patch_entropy"} & {k for h in result.history for k in h}

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    record = json.loads((result.backbone_dir / "pretrain.json").read_text(), parse_constant=refuse)
    assert "teacher_entropy" not in record["ssl"]["last"]
    assert record["ssl"]["last"]["patch_std"] > 0
    towers = create_towers(PretrainConfig(model="semclip-tiny"))
    ssl = SelfDistillation(towers.model.visual, SSLConfig(objective="features"))
    names = {id(p) for p in ssl.student_parameters()}
    assert {id(p) for p in ssl.patch_predictor.parameters()} <= names
    assert not {id(p) for p in ssl.cls_head.parameters()} & names  # prototypes unused
    with pytest.raises(ValueError, match="unknown SSL objective"):
        SelfDistillation(towers.model.visual, SSLConfig(objective="nope"))


@pytest.mark.slow  # a training run
def test_step_runs_on_a_sem_small_batch() -> None:
    """The objective runs on the CPU-sized config too (10 x 10 patches, local crops 64 px)."""
    towers = create_towers(PretrainConfig(model="semclip-sem-small"))
    cfg = SSLConfig(objective="distill", prototypes=32, head_hidden=32, head_bottleneck=16)
    ssl = SelfDistillation(towers.model.visual, cfg)
    g = torch.Generator().manual_seed(0)
    views = Views(
        torch.randn(2, 2, 3, 160, 160, generator=g),
        torch.randn(2, 2, 3, 64, 64, generator=g),
        block_masks(4, towers.grid, replace(cfg, mask_prob=1.0), g).view(2, 2, -1),
    )
    loss, metrics = ssl(towers.model.visual, views, 0.04)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and 0 < metrics["teacher_entropy"] <= 1
    assert towers.model.visual.conv1.weight.grad is not None and ssl.mask_token.grad is not None


# ------------------------------------------------------------------------------ runs
@pytest.mark.slow  # a training run
def test_ssl_run_logs_indicators_and_exports_a_loadable_backbone(finished) -> None:
    assert finished.finished and finished.step == TINY.steps and finished.collapsed is None
    for entry in finished.history:
        for key in ("loss_ssl_cls", "loss_ssl_patch", "teacher_entropy", "patch_std"):
            assert math.isfinite(entry[key]), key
    folder = finished.backbone_dir
    for name in ("MODEL_CARD.md", "pretrain.json", "seen_images.txt", UNLABELED_IMAGES):
        assert (folder / name).is_file(), name
    loaded = load_backbone(f"local-dir:{folder}", None, "cpu")
    assert loaded.image_size == 64
    card = (folder / "MODEL_CARD.md").read_text()
    assert "40 unlabelled images used; 0 skipped" in card
    assert "Unlabelled adaptation" in card and "kNN patch AUROC" in card
    assert "objective: iBOT-style self-distillation" in card and "teacher entropy" in card
    record = json.loads((folder / "pretrain.json").read_text())
    assert record["zero_shot"]["before"]["n_images"] > 0
    assert record["zero_shot"]["after"]["accuracy"] is not None
    assert record["probe"]["after"]["knn_patch_auroc"] is not None


@pytest.mark.slow  # a training run
def test_text_tower_and_projection_are_unchanged(finished) -> None:
    trained = load_file(str(finished.backbone_dir / "open_clip_model.safetensors"))
    start = create_towers(TINY).model.state_dict()
    for name, value in start.items():
        vision_trunk = name.startswith("visual.") and not name.startswith(
            ("visual.ln_post", "visual.proj")
        )
        if vision_trunk:
            continue
        assert torch.equal(value, trained[name]), name  # text tower, ln_post, proj, logit scale
    assert not torch.equal(start["visual.conv1.weight"], trained["visual.conv1.weight"])


@pytest.mark.slow  # a training run
def test_unlabeled_images_are_the_sha256_of_the_used_files(finished, unlabeled_dir: Path) -> None:
    expected = sorted({_sha(p) for p in unlabeled_dir.rglob("*.png")})
    assert (finished.backbone_dir / UNLABELED_IMAGES).read_text().splitlines() == expected
    assert read_unlabeled_images(f"local-dir:{finished.backbone_dir}") == set(expected)


@pytest.mark.slow  # a training run
def test_ssl_resume_ends_identical_and_refuses_another_recipe(
    finished, unlabeled_dir: Path, labelled_dir: Path, tmp_path: Path
) -> None:
    kw = dict(
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "bb",
        unlabeled=unlabeled_dir,
        zeroshot_data=labelled_dir,
        progress=False,
    )
    first = pretrain(TINY, stop_after=3, **kw)
    assert not first.finished and first.step == 3
    with pytest.raises(ValueError, match="--restart"):
        pretrain(replace(TINY, ssl=replace(TINY.ssl, prototypes=32)), stop_after=1, **kw)
    second = pretrain(TINY, **kw)
    assert second.finished and second.step == TINY.steps
    resumed = load_file(str(second.backbone_dir / "open_clip_model.safetensors"))
    straight = load_file(str(finished.backbone_dir / "open_clip_model.safetensors"))
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.slow  # a training run
def test_continuing_from_a_local_dir_inherits_its_image_lists(
    finished, unlabeled_dir: Path, tmp_path: Path
) -> None:
    folder = finished.backbone_dir
    (folder / "seen_images.txt").write_text("ab" * 32 + "\n")  # pretend it saw a labelled image
    config = replace(TINY, model=f"local-dir:{folder}", steps=1)
    result = pretrain(
        config,
        work_dir=tmp_path / "w",
        out_dir=tmp_path / "b",
        unlabeled=unlabeled_dir,
        progress=False,
    )
    assert (result.backbone_dir / "seen_images.txt").read_text() == "ab" * 32 + "\n"
    assert "Not measured" in (result.backbone_dir / "MODEL_CARD.md").read_text()
    (folder / "seen_images.txt").write_text("")


@pytest.mark.slow  # a training run
def test_mixed_run_has_both_objectives(
    unlabeled_dir: Path, labelled_dir: Path, tmp_path: Path
) -> None:
    config = replace(TINY, steps=2, val_fraction=0.2)
    result = pretrain(
        config,
        work_dir=tmp_path / "w",
        out_dir=tmp_path / "b",
        data=labelled_dir,
        unlabeled=unlabeled_dir,
        progress=False,
    )
    assert result.finished
    entry = result.history[-1]
    assert math.isfinite(entry["loss_clip"]) and math.isfinite(entry["loss_ssl_patch"])
    record = json.loads((result.backbone_dir / "pretrain.json").read_text())
    assert record["config"]["lock_text"] and not record["config"]["ssl_only"]
    assert len((result.backbone_dir / "seen_images.txt").read_text().splitlines()) == 12


# ------------------------------------------------------------------------------ sources
@pytest.mark.slow  # a training run
def test_bad_files_are_skipped_and_counted(unlabeled_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(unlabeled_dir.rglob("*.png"))[:5]
    for i, path in enumerate(good):
        (folder / f"img{i}.png").write_bytes(path.read_bytes())
    (folder / "dup.png").write_bytes(good[0].read_bytes())
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.tif").write_bytes(b"II*\x00garbage")
    (folder / "truncated.png").write_bytes(good[1].read_bytes()[:100])
    (folder / "masks").mkdir()
    (folder / "masks" / "m.png").write_bytes(good[2].read_bytes())  # a mask folder: not read
    (folder / "notes.txt").write_text("not an image")
    pool = load_unlabeled(str(folder), size=40, progress=False)
    assert len(pool) == 5 and pool.stored.shape == (5, 40, 40)
    assert pool.skipped == {"duplicate": 1, "empty": 1, "unreadable": 2}
    assert any("corrupt.tif" in line for line in pool.skipped_examples)
    result = pretrain(
        replace(TINY, steps=1),
        work_dir=tmp_path / "w",
        out_dir=tmp_path / "b",
        unlabeled=folder,
        progress=False,
    )
    card = (result.backbone_dir / "MODEL_CARD.md").read_text()
    assert "5 unlabelled images used; 4 skipped (duplicate 1, empty 1, unreadable 2)" in card


@pytest.mark.slow
def test_manifest_source_reads_the_image_column_only(unlabeled_dir: Path, tmp_path: Path) -> None:
    folder = unlabeled_dir.parent  # the synthetic set: manifest.csv with labels and masks
    pool = load_unlabeled(str(folder), size=32, progress=False)
    assert pool.source["kind"] == "manifest" and len(pool) == 40 and not pool.skipped
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.parent.mkdir()
    first = sorted(unlabeled_dir.rglob("*.png"))[0]
    manifest.write_text(f"image\n{first}\ngone.png\n../escape.png\n")
    pool = load_unlabeled(str(manifest.parent), size=32, progress=False)
    assert len(pool) == 1 and pool.skipped == {"missing": 1, "outside": 1}


def test_date_range_parsing() -> None:
    dates = DateRange.parse("2026-01-02..2026-01-03")
    assert str(dates) == "2026-01-02..2026-01-03"
    assert str(DateRange.parse("2026-01-05")) == "2026-01-05..2026-01-05"
    for bad in ("2026-01-03..2026-01-02", "yesterday"):
        with pytest.raises(ValueError):
            DateRange.parse(bad)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def raw_bucket(request: pytest.FixtureRequest, tmp_path: Path, unlabeled_dir: Path):
    """A bucket with raw/<date>/ folders of 3 images each (and a KLARF and a prediction)."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        url = f"s3://semclip-ssl-{tmp_path.name[-8:].lower().replace('_', '-')}"
    else:
        endpoint, url = None, f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, endpoint_url=endpoint, create=True)
    images = sorted(unlabeled_dir.rglob("*.png"))
    for d, day in enumerate(("2026-01-01", "2026-01-02", "2026-01-03")):
        for i in range(3):
            data = images[3 * d + i].read_bytes()
            fs.pipe_file(f"{root}/raw/{day}/lot1/w{i}.png", data)
        fs.pipe_file(f"{root}/raw/{day}/lot1/lot1.klarf", b"not an image")
    fs.pipe_file(f"{root}/predictions/date=2026-01-01/x.parquet", b"x")
    return url, endpoint, images


@pytest.mark.slow
def test_dates_select_only_those_raw_folders(raw_bucket, tmp_path: Path) -> None:
    url, endpoint, images = raw_bucket
    pool = load_unlabeled(
        url,
        size=32,
        dates=DateRange.parse("2026-01-02..2026-01-03"),
        work_dir=tmp_path / "work",
        endpoint_url=endpoint,
        progress=False,
    )
    assert {img.sha256 for img in pool.images} == {_sha(p) for p in images[3:9]}
    assert all("/raw/2026-01-0" in img.uri for img in pool.images)
    assert pool.source["dates"] == "2026-01-02..2026-01-03"
    everything = load_unlabeled(
        url.rstrip("/") + "/raw",
        size=32,
        work_dir=tmp_path / "work2",
        endpoint_url=endpoint,
        progress=False,
    )
    assert len(everything) == 9


@pytest.mark.slow  # a training run
def test_cli_unlabeled_stop_and_resume(
    unlabeled_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "pretrain",
        "--model",
        "semclip-tiny",
        "--unlabeled",
        str(unlabeled_dir),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--ssl-prototypes",
        "32",
        "--cpu-bf16",
        "off",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "bb"),
    ]
    assert main([*args, "--stop-after", "1"]) == 0
    assert "stopped at step 1/2" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot: not measured" in out and str(tmp_path / "bb") in out
    record = json.loads((tmp_path / "bb" / "pretrain.json").read_text())
    assert record["config"]["lock_text"] and record["config"]["ssl"]["prototypes"] == 32
    labelled = generate_dataset(
        tmp_path / "zs", counts={"good": 4, "particle": 4, "scratch": 4}, seed=64, size=64
    )
    again = [*args[:-4], "--work-dir", str(tmp_path / "w2"), "--out", str(tmp_path / "bb2")]
    assert main([*again, "--zeroshot-data", str(labelled)]) == 0
    out = capsys.readouterr().out
    zero_shot = re.search(r"zero-shot: accuracy (\S+), patch AUROC (\S+)", out)
    assert zero_shot and all(re.fullmatch(r"\d\.\d{3}", v) for v in zero_shot.groups()), out


# ------------------------------------------------------------------------------ evaluation
@pytest.mark.slow  # a training run
def test_eval_reports_transductive_overlap(
    finished, unlabeled_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    test_set = generate_dataset(
        tmp_path / "test", counts={"good": 3, "particle": 2}, seed=63, size=64
    )
    shared = sorted((test_set / "images").rglob("*.png"))[0]
    backbone = finished.backbone_dir
    listed = (backbone / UNLABELED_IMAGES).read_text()
    (backbone / UNLABELED_IMAGES).write_text(listed + _sha(shared) + "\n")
    try:
        paths = [s.image for s in load_dataset(test_set).samples]
        assert unlabeled_overlap(backbone, paths) == {str(shared)}
        code = main(
            [
                "eval",
                "--data",
                str(test_set),
                "--out",
                str(tmp_path / "r"),
                "--backbone",
                f"local-dir:{backbone}",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--method",
                "clip-zero",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
    finally:
        (backbone / UNLABELED_IMAGES).write_text(listed)
    assert code == 0
    note = transductive_note(1, 5)
    assert (
        note == "transductive: 1 of 5 test images were in the backbone's unlabelled adaptation set"
    )
    assert note in (tmp_path / "r" / "report.md").read_text()
    records = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert records and all(r["transductive_images"] == 1 for r in records)
