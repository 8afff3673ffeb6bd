"""Named imaging styles: which scenes a tool looks at, how it images them, how defects look.

A style is one review tool's look. Pretraining mixes the default styles
(:data:`DEFAULT_STYLES`); held-out styles (``pretrain=False``) use other pattern families,
other imaging and other defect appearances, so that transfer to an unseen tool can be measured
on them. Class names are the same in every style. Add a style by adding one entry to
:data:`STYLES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from semclip.synth.databar import DatabarSpec
from semclip.synth.defects import DefectSpec
from semclip.synth.effects import CLASSIC_IMAGING, ImagingSpec
from semclip.synth.patterns import CLASSIC_PATTERNS, PATTERNS


@dataclass(frozen=True)
class Style:
    """One tool's look: scenes, imaging ranges, defect ranges and databar."""

    name: str
    description: str  # one line for `semclip synth --help`
    patterns: tuple[str, ...]  # background families drawn uniformly
    imaging: ImagingSpec = CLASSIC_IMAGING
    defects: DefectSpec = field(default_factory=DefectSpec)
    databar: DatabarSpec = field(default_factory=DatabarSpec)
    pretrain: bool = True  # part of the default mix; False = held out of pretraining


_WIDE_DEFECTS = DefectSpec(size=(0.35, 2.2), edge_prob=0.3)

STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style(
            "classic",
            "the original generator: line/contact/Cu/logic scenes, bright SE edges, white noise",
            CLASSIC_PATTERNS,
        ),
        Style(
            "dense",
            "small pitches (dots, fins, SRAM, fine lines), strong edges, scan-line and "
            "bandwidth-correlated noise, low magnification, jitter",
            ("dots", "fins", "sram", "line_h", "line_v", "contacts", "resist"),
            imaging=ImagingSpec(
                edge_gain=(0.3, 0.55),
                edge_sigma=(0.5, 1.2),
                blur=(0.3, 1.2),
                astigmatism=(0.7, 1.4),
                noise=(("white", 1.0), ("scan", 1.0), ("correlated", 1.0)),
                line_noise=(0.0, 0.03),
                jitter=(0.0, 0.6),
                zoom=(0.6, 1.0),
                dose=(40.0, 250.0),
            ),
            defects=_WIDE_DEFECTS,
            databar=DatabarSpec(
                sides=(("bottom", 2.0), ("top", 1.0), ("none", 1.0)),
                frac=(0.05, 0.1),
                inverted_prob=0.2,
                layouts=("classic", "centred", "two-line"),
                font_scale=(0.5, 0.75),
            ),
        ),
        Style(
            "material",
            "BSE-like material contrast: weak or dark edges, strong grey-level contrast, "
            "either polarity, Cu/logic/SRAM/blank film, charging smear",
            ("cu_grain", "manhattan", "sram", "blank_film", "contacts", "dots", "line_h"),
            imaging=ImagingSpec(
                edge_gain=(0.0, 0.2),
                dark_edge_prob=0.3,
                material_gain=(1.3, 2.6),
                invert_prob=0.5,
                blur=(0.6, 1.8),
                charge_ramp=(0.0, 0.2),
                charge_blob=(-0.1, 0.15),
                charge_tail=(0.0, 0.4),
                noise=(("white", 2.0), ("correlated", 1.0), ("pink", 0.5)),
                pink_slope=(0.5, 1.0),
                zoom=(0.7, 1.6),
                contrast=(0.8, 1.5),
            ),
            defects=_WIDE_DEFECTS,
            databar=DatabarSpec(
                sides=(("bottom", 1.0), ("top", 1.0), ("none", 1.0)),
                frac=(0.06, 0.12),
                inverted_prob=0.3,
                layouts=("classic", "right", "two-line"),
                font_scale=(0.5, 0.8),
            ),
        ),
        Style(
            "rough",
            "resist/rough film/line scenes at low dose: heavy blur and astigmatism, drift, "
            "strong charging, high magnification",
            ("resist", "blank_film", "line_h", "line_v", "manhattan", "fins", "cu_grain"),
            imaging=ImagingSpec(
                edge_gain=(0.15, 0.55),
                blur=(0.8, 2.6),
                astigmatism=(0.6, 1.7),
                charge_ramp=(0.05, 0.25),
                charge_blob=(-0.12, 0.18),
                charge_tail=(0.0, 0.3),
                dose=(20.0, 120.0),
                read_noise=(0.01, 0.03),
                noise=(("white", 1.0), ("scan", 1.0)),
                line_noise=(0.0, 0.03),
                jitter=(0.0, 1.0),
                drift=(0.0, 6.0),
                zoom=(1.0, 2.0),
            ),
            defects=_WIDE_DEFECTS,
            databar=DatabarSpec(
                sides=(("bottom", 2.0), ("none", 1.0)),
                frac=(0.06, 0.1),
                inverted_prob=0.1,
                layouts=("classic", "centred"),
            ),
        ),
        Style(
            "tool-b",
            "HELD OUT of pretraining: hex contacts, diagonal lines, via chains, trenches; "
            "inverted polarity, dark/weak edges, 1/f noise, high magnification, top databar "
            "in light colours, dark particles, rimless holes, scratch bundles",
            ("hex_contacts", "diagonal", "via_chain", "trench"),
            imaging=ImagingSpec(
                edge_gain=(0.05, 0.3),
                dark_edge_prob=0.5,
                material_gain=(1.2, 2.0),
                invert_prob=0.8,
                blur=(0.8, 1.6),
                astigmatism=(1.5, 2.2),
                charge_ramp=(0.0, 0.08),
                noise=(("pink", 1.0),),
                pink_slope=(1.6, 2.4),
                line_noise=(0.0, 0.01),
                jitter=(0.2, 0.6),
                zoom=(1.5, 2.3),
                dose=(80.0, 250.0),
            ),
            defects=DefectSpec(size=(0.6, 2.0), edge_prob=0.4, variant_prob=0.6),
            databar=DatabarSpec(
                sides=(("top", 1.0),),
                frac=(0.1, 0.1),
                inverted_prob=1.0,
                layouts=("right",),
                font_scale=(0.75, 0.75),
            ),
            pretrain=False,
        ),
    )
}

DEFAULT_STYLES: tuple[str, ...] = tuple(name for name, s in STYLES.items() if s.pretrain)
HELDOUT_STYLES: tuple[str, ...] = tuple(name for name, s in STYLES.items() if not s.pretrain)
DEFAULT_MIX = "default"  # the --style value that mixes DEFAULT_STYLES


def resolve_styles(name: str | None) -> tuple[Style, ...]:
    """Styles for ``name``: one style, or the default mix for None / "default"."""
    if name is None or name == DEFAULT_MIX:
        return tuple(STYLES[n] for n in DEFAULT_STYLES)
    if name not in STYLES:
        raise ValueError(
            f"unknown style {name!r}; choose one of {[DEFAULT_MIX, *STYLES]} "
            f"(held out of pretraining: {list(HELDOUT_STYLES)})"
        )
    return (STYLES[name],)


def pretraining_patterns() -> tuple[str, ...]:
    """Pattern families of the default styles, sorted: what pretraining may draw."""
    return tuple(sorted({p for n in DEFAULT_STYLES for p in STYLES[n].patterns}))


def heldout_only_patterns() -> tuple[str, ...]:
    """Families that only held-out styles draw: pretraining must never see them."""
    return tuple(sorted(set(PATTERNS) - set(pretraining_patterns())))


for _style in STYLES.values():  # a typo in a table entry fails at import, not mid-run
    assert set(_style.patterns) <= set(PATTERNS), _style.name
