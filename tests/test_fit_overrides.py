"""`--fit KEY=VALUE`: FitConfig defaults re-measured from the command line, typed and named."""

from __future__ import annotations

from pathlib import Path

import pytest

from semclip import FitConfig


def test_overrides_are_read_as_their_fields_types() -> None:
    config = FitConfig().with_overrides(
        ["surgery_scale=10", "default_alpha=0.5", "train_patches=0", "dice-per-image=yes",
         " membank = false", "class_alpha=global"]
    )  # fmt: skip
    assert config.surgery_scale == 10.0 and isinstance(config.surgery_scale, float)
    assert config.default_alpha == 0.5
    assert config.train_patches == 0 and isinstance(config.train_patches, int)
    assert config.dice_per_image is True and config.membank is False
    assert config.class_alpha == "global"
    assert FitConfig().with_overrides([]) == FitConfig()


@pytest.mark.parametrize(
    ("pair", "named"),
    [
        ("surgery_temperature=10", "'surgery_temperature': no such field; known: augment"),
        ("surgery_scale", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train_patches=many", "train_patches='many': expected a int"),
        ("default_alpha=", "default_alpha='': expected a float"),
        ("augment=maybe", "augment='maybe': expected true or false"),
        ("membank_tokens=cls", "membank_tokens='cls': expected one of vanilla, vv"),
        ("head_init=zeros", "head_init='zeros': expected one of prototype, random"),
    ],
)
def test_a_bad_override_fails_naming_the_field(pair: str, named: str) -> None:
    with pytest.raises(ValueError, match="fit override") as raised:
        FitConfig().with_overrides([pair])
    assert named in str(raised.value)


@pytest.mark.parametrize("region_map", ["self", "both"])
def test_contradicting_settings_fail_naming_both_fields(region_map: str) -> None:
    """A region read on S_self with S_self turned off: refused where the overrides are read
    and where a fit starts, not a model silently fitted without the region head asked for."""
    from semclip import SemclipModel

    with pytest.raises(ValueError, match=f"region_map={region_map} .* selfsim=false"):
        FitConfig().with_overrides(["selfsim=false", f"region_map={region_map}"])
    config = FitConfig(selfsim=False, region_map=region_map)
    with pytest.raises(ValueError, match="selfsim=false"):
        SemclipModel.fit(None, [], config=config)  # type: ignore[arg-type]  # refused first
    for fine in ("fused", "choose"):
        FitConfig().with_overrides(["selfsim=false", f"region_map={fine}"]).check()


def test_cli_refuses_a_bad_override_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from semclip.cli import main

    gone = f"{tmp_path}/no-such-set"
    for command in ("fit", "eval"):
        code = main([command, "--data", gone, "--out", f"{tmp_path}/o", "--fit", "alpha_k1=0.5"])
        assert code == 2
        err = capsys.readouterr().err
        assert "'alpha_k1': no such field" in err and "no-such-set" not in err


@pytest.mark.slow
def test_fit_applies_overrides_to_the_saved_model(synth_dir: Path, tmp_path: Path) -> None:
    """At k = 1 nothing is held out: the model's α is `default_alpha`, as the override set it."""
    from semclip import load_model
    from semclip.cli import main

    out = tmp_path / "model"
    options = ["--fit", "default_alpha=0.5", "--fit", "surgery_scale=10", "--fit",
               "max_steps=5", "--fit", "min_steps=5", "--no-augment"]  # fmt: skip
    code = main(["fit", "--data", str(synth_dir), "--out", str(out), "--shots", "1",
                 "--backbone", "semclip-tiny", *options])  # fmt: skip
    assert code == 0
    model = load_model(out, device="cpu")
    assert model.calibration.method == "default" and model.calibration.alpha == 0.5
    assert model.calibration.surgery_scale == 10.0
    assert model.fit_config.max_steps == 5 and model.fit_config.default_alpha == 0.5
