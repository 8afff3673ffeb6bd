"""Prompt library: data file, generic prompts for unknown labels, text prototypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semclip.backbone import load_backbone
from semclip.prompts import PromptLibrary, load_prompts, text_prototypes

DEFAULT_CLASSES = ("good", "bridge", "copper_residue", "hole", "infilm", "particle", "scratch")


def test_default_library_has_expert_states_for_every_default_class() -> None:
    lib = load_prompts()
    assert set(DEFAULT_CLASSES) <= set(lib.states)
    for label in DEFAULT_CLASSES:
        assert len(lib.states[label]) >= 4
    assert any("fish scale" in s for s in lib.states["scratch"])
    assert any("blurry" in t for t in lib.templates) and any("dark" in t for t in lib.templates)
    sentences = lib.sentences("scratch")
    assert len(sentences) == len(lib.templates) * len(lib.states["scratch"])
    assert "a blurry SEM image of a fine long linear scratch in the back-end metal layers." in (
        sentences
    )


def test_unknown_label_gets_generic_states_from_its_name() -> None:
    lib = load_prompts()
    states = lib.class_states("weird_blob")
    assert states and all("weird blob" in s for s in states)
    assert lib.class_states("scratch", generic=True) != lib.states["scratch"]
    assert lib.class_states("good", generic=True) == lib.generic_normal


def test_round_trip_and_custom_file(tmp_path: Path) -> None:
    lib = load_prompts()
    assert PromptLibrary.from_dict(lib.to_dict()) == lib
    path = tmp_path / "p.yaml"
    path.write_text(
        "templates: ['a photo of {}.']\nstates: {good: [a wafer]}\n"
        "generic: {normal: [normal], defect: ['{label}']}\n"
    )
    custom = load_prompts(path)
    assert custom.sentences("good") == ["a photo of a wafer."]
    assert custom.sentences("nick") == ["a photo of nick."]


def test_malformed_files_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("templates: ['no placeholder']\ngeneric: {normal: [a], defect: [b]}\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_prompts(path)
    path.write_text("states: {}\n")
    with pytest.raises(ValueError, match=str(path)):
        load_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_text_prototypes_are_unit_vectors_per_class() -> None:
    backbone = load_backbone("semclip-tiny", None, "cpu")
    lib = load_prompts()
    classes = ["good", "scratch", "weird_blob"]
    protos = text_prototypes(backbone.model, backbone.tokenizer, lib, classes)
    assert protos.shape == (3, backbone.model.visual.proj.shape[1])
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(3))
    # the scratch prototype is the renormalised mean of its sentence embeddings
    tokens = backbone.tokenizer(lib.sentences("scratch"))
    with torch.no_grad():
        embs = torch.nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1)
    expected = torch.nn.functional.normalize(embs.mean(0), dim=-1)
    torch.testing.assert_close(protos[1], expected, atol=1e-5, rtol=0)
    generic = text_prototypes(backbone.model, backbone.tokenizer, lib, classes, generic=True)
    assert not torch.allclose(generic[1], protos[1])
