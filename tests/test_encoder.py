"""DualPathEncoder agrees with open_clip (vanilla path) and with a slow reference (V-V path)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from semclip.backbone import load_backbone
from semclip.encoder import DualPathEncoder, stage_ends

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1}


def tiny_clip(layers: int = 4, ls_init_value: float | None = None) -> open_clip.CLIP:
    torch.manual_seed(0)
    vision = {
        "image_size": 48,
        "layers": layers,
        "width": 64,
        "head_width": 16,
        "patch_size": 8,
        "ls_init_value": ls_init_value,
    }
    return open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG).eval()


@pytest.mark.parametrize(
    ("layers", "stages", "ends"),
    [
        (12, 4, [2, 5, 8, 11]),
        (6, 4, [1, 2, 4, 5]),
        (4, 4, [0, 1, 2, 3]),
        (24, 4, [5, 11, 17, 23]),
        (12, 1, [11]),
        (7, 3, [2, 4, 6]),
    ],
)
def test_stage_ends_follow_the_design_formula(layers: int, stages: int, ends: list[int]) -> None:
    assert stage_ends(layers, stages) == ends


def test_stage_ends_rejects_more_stages_than_layers() -> None:
    with pytest.raises(ValueError, match="n_stages"):
        stage_ends(4, 5)


@pytest.mark.parametrize("ls_init_value", [None, 0.3])
def test_vanilla_path_equals_open_clip(ls_init_value: float | None) -> None:
    model = tiny_clip(layers=6, ls_init_value=ls_init_value)
    enc = DualPathEncoder(model, n_stages=4)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        stages = enc(x)
        ref = model.visual.forward_intermediates(
            x, indices=enc.ends, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        image_features = model.encode_image(x)
    assert len(stages) == 4
    for st, patches, prefix in zip(
        stages, ref["image_intermediates"], ref["image_intermediates_prefix"], strict=True
    ):
        assert st.vanilla.shape == (3, 37, 64)
        torch.testing.assert_close(st.vanilla, torch.cat([prefix, patches], 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        enc.project(stages[-1].vanilla[:, 0]), image_features, atol=1e-5, rtol=0
    )


def reference_vv(model: open_clip.CLIP, x: torch.Tensor, ends: list[int]) -> list[torch.Tensor]:
    """Slow, obviously-correct V-V path: explicit loops over heads, softmax(v vᵀ/√d) v."""
    visual = model.visual
    tokens = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    h = visual.ln_pre(torch.cat([cls, tokens], 1) + visual.positional_embedding)
    outs, acc = [], torch.zeros_like(h)
    for j, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        c = h.shape[-1]
        d = c // attn.num_heads
        v = block.ln_1(h) @ attn.in_proj_weight[2 * c :].T + attn.in_proj_bias[2 * c :]
        heads = []
        for i in range(attn.num_heads):
            vh = v[..., i * d : (i + 1) * d]
            weights = torch.softmax(vh @ vh.transpose(1, 2) / math.sqrt(d), dim=-1)
            heads.append(weights @ vh)
        a = block.ls_1(attn.out_proj(torch.cat(heads, -1)))
        acc = acc + a
        h = block(h)  # open_clip's own block for the vanilla stream
        if j in ends:
            vv = visual.ln_post(acc) @ visual.proj
            vv[:, 0] = visual.ln_post(h[:, 0]) @ visual.proj
            outs.append(vv)
            acc = torch.zeros_like(h)
    return outs


@pytest.mark.parametrize("ls_init_value", [None, 0.3])
def test_vv_path_equals_slow_reference(ls_init_value: float | None) -> None:
    model = tiny_clip(layers=6, ls_init_value=ls_init_value)
    enc = DualPathEncoder(model, n_stages=4)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        stages = enc(x)
        ref = reference_vv(model, x, enc.ends)
    for st, expected in zip(stages, ref, strict=True):
        assert st.vv.shape == (2, 37, 32)
        torch.testing.assert_close(st.vv, expected, atol=1e-5, rtol=0)


def test_vv_path_differs_from_vanilla_and_restarts_per_stage() -> None:
    model = tiny_clip(layers=4)
    enc = DualPathEncoder(model, n_stages=2)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        first, second = enc(x)
        ref = reference_vv(model, x, enc.ends)
    assert not torch.allclose(first.vv[:, 1:], enc.project(first.vanilla[:, 1:]), atol=1e-3)
    torch.testing.assert_close(second.vv, ref[1], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_registered_tiny_backbone_runs_the_encoder() -> None:
    backbone = load_backbone("semclip-tiny", None, "cpu")
    enc = DualPathEncoder(backbone.model)
    x = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        stages = enc(x)
    assert [s.vanilla.shape[-1] for s in stages] == [enc.width] * 4
    assert stages[0].vv.shape == (2, 1 + enc.grid**2, enc.embed_dim)


@pytest.mark.parametrize("ls_init_value", [None, 0.3])
def test_fused_layout_equals_separate_calls(ls_init_value: float | None) -> None:
    """The CUDA layout (one SDPA and one out_proj over [vanilla; V-V]) is the same arithmetic."""
    model = tiny_clip(layers=6, ls_init_value=ls_init_value)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        separate = DualPathEncoder(model, n_stages=4, fused=False)(x)
        fused = DualPathEncoder(model, n_stages=4, fused=True)(x)
        by_device = DualPathEncoder(model, n_stages=4)(x)  # CPU: separate calls
    for a, b, c in zip(separate, fused, by_device, strict=True):
        torch.testing.assert_close(a.vanilla, b.vanilla, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.vv, b.vv, atol=1e-5, rtol=0)
        assert torch.equal(a.vv, c.vv)
