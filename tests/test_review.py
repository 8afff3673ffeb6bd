"""The review loop: reasons, review order, export to review/date=D/, import into confirmed/,
and the next refit training on the imported decisions; on file:// and moto S3."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from semclip import rle
from semclip.io.confirmed import load_confirmed
from semclip.io.klarf_export import load_class_codes
from semclip.io.partitions import write_partition
from semclip.io.pipeline_schema import PIPELINE_PREDICTION_SCHEMA, pipeline_records_to_table
from semclip.review.export import export_review, review_folder
from semclip.review.importer import ReviewImportError, import_review
from semclip.review.overlay import overlay_png
from semclip.review.reasons import (
    LOW_CONFIDENCE,
    MASK_DISAGREES,
    REASONS,
    SMALL_MARGIN,
    UNKNOWN_KLARF_CODE,
    ReviewRule,
    known_class_codes,
    review_reasons,
    top_classes,
)
from semclip.review.sampling import Candidate, rank_for_review

if TYPE_CHECKING:
    from conftest_pipeline import Kit
    from conftest_storage import BucketCase

pytest_plugins = ["conftest_pipeline"]

DAY = dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)
RULE = ReviewRule(margin=0.1, min_probability=0.5, class_codes=frozenset({1, 3}))


def _row(cls: str, probs: dict[str, float], **extra: Any) -> dict[str, Any]:
    row = {"predicted_class": cls, "probabilities": probs, "needs_review": False}
    row["defect_area_px"] = 0 if cls == "good" else 10
    return {**row, **extra}


# --------------------------------------------------------------------------- reasons


def test_each_reason_from_the_row_alone() -> None:
    sure = {"good": 0.05, "particle": 0.9, "bridge": 0.05}
    assert review_reasons(_row("particle", sure), RULE) == []
    low = {"good": 0.3, "particle": 0.45, "bridge": 0.25}
    assert review_reasons(_row("particle", low, needs_review=True), RULE) == [LOW_CONFIDENCE]
    close = {"good": 0.02, "particle": 0.52, "bridge": 0.46}
    assert review_reasons(_row("particle", close), RULE) == [SMALL_MARGIN]
    # a good image with defect pixels, a defect class without any
    assert review_reasons(_row("good", {"good": 0.9, "x": 0.1}, defect_area_px=5), RULE) == [
        MASK_DISAGREES
    ]
    assert review_reasons(_row("particle", sure, defect_area_px=0), RULE) == [MASK_DISAGREES]
    # flagged by the model although confident: the mask's majority class disagrees
    assert review_reasons(_row("particle", sure, needs_review=True), RULE) == [MASK_DISAGREES]
    assert review_reasons(_row("particle", sure, klarf_classnumber=7), RULE) == [UNKNOWN_KLARF_CODE]
    assert review_reasons(_row("particle", sure, klarf_classnumber=3), RULE) == []
    no_map = ReviewRule(class_codes=None)
    assert review_reasons(_row("particle", sure, klarf_classnumber=7), no_map) == []
    both = review_reasons(_row("particle", {"particle": 0.41, "bridge": 0.4}), RULE)
    assert both == [SMALL_MARGIN, LOW_CONFIDENCE]
    assert review_reasons({"predicted_class": None, "probabilities": None}, RULE) == []


def test_top_classes_reads_dicts_and_arrow_pairs() -> None:
    pairs = [("good", 0.1), ("bridge", 0.3), ("particle", 0.5), ("hole", 0.1)]
    assert top_classes(pairs) == [("particle", 0.5), ("bridge", 0.3), ("good", 0.1)]
    assert top_classes(dict(pairs), 1) == [("particle", 0.5)]


def test_known_codes_are_the_write_back_map_s_codes() -> None:
    """Review reads the same map as KLARF write-back (prompt file + setting), parsed once."""
    codes = load_class_codes(setting="particle=3, newclass=42")
    known = known_class_codes(codes)
    assert known == frozenset(codes.values())
    assert {3, 42} <= known
    assert known_class_codes({}) is None
    assert known_class_codes(None) is None


# --------------------------------------------------------------------------- order


def test_review_order_covers_every_stratum_before_a_second_of_any() -> None:
    cands = [Candidate(f"p{i}", "particle", 0.01 * i, (SMALL_MARGIN,)) for i in range(5)] + [
        Candidate("b0", "bridge", 0.3, (LOW_CONFIDENCE,)),
        Candidate("b1", "bridge", 0.2, (LOW_CONFIDENCE,)),
        Candidate("g0", "good", 0.05, (MASK_DISAGREES,)),
        Candidate("quiet", "good", 0.0, ()),
    ]
    order = [c.key for c in rank_for_review(cands)]
    assert order[:3] == ["p0", "g0", "b1"]  # one per stratum, most uncertain stratum first
    assert order[3:5] == ["p1", "b0"]
    assert order[-1] == "quiet"  # no reason: last
    assert [c.key for c in rank_for_review(cands, 2)] == ["p0", "g0"]


# --------------------------------------------------------------------------- overlay


def test_overlay_tints_the_mask_and_refuses_another_size() -> None:
    pixels = np.full((20, 30), 0.5, dtype=np.float32)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 10:20] = True
    image = np.asarray(Image.open(io.BytesIO(overlay_png(pixels, mask))))
    assert image.shape == (20, 30, 3)
    assert image[10, 15, 0] > image[10, 15, 1]  # red inside
    assert tuple(image[0, 0]) == (127, 127, 127)  # gray outside
    with pytest.raises(ValueError, match="does not fit"):
        overlay_png(pixels, mask[:10])


# --------------------------------------------------------------------------- export


def _seed_night(case: BucketCase, kit: Kit, n: int = 8) -> list[str]:
    """raw/<DAY>/ images and a partition: odd images flagged (margin), even ones confident."""
    records, uris = [], []
    for i in range(n):
        data = kit.synth_png("particle" if i % 2 else "good", i)
        path = f"{case.root}/raw/{DAY}/LOT1/W0{i % 2 + 1}/D{i:03d}.png"
        case.fs.pipe_file(path, data)
        uri = case.fs.unstrip_protocol(path)
        uris.append(uri)
        mask = np.zeros((kit.IMAGE_SIZE, kit.IMAGE_SIZE), dtype=np.uint8)
        if i % 2:
            mask[10:20, 10:30] = 1
            probs = {"good": 0.1, "particle": 0.46 + 0.001 * i, "bridge": 0.44}
            cls = "particle"
        else:
            probs = {"good": 0.9, "particle": 0.05, "bridge": 0.05}
            cls = "good"
        row = {name: None for name in PIPELINE_PREDICTION_SCHEMA.names}
        row.update(
            image_uri=uri,
            image_sha256=f"{i:02d}" + "ab" * 31,
            predicted_class=cls,
            probabilities=probs,
            anomaly_score=1 - probs["good"],
            needs_review=bool(i % 2),
            mask_rle=rle.encode(mask)["counts"] if mask.any() else None,
            mask_height=kit.IMAGE_SIZE,
            mask_width=kit.IMAGE_SIZE,
            defect_area_px=int(mask.sum()),
            model_name="semclip-sem",
            model_version="1",
            lot_id="LOT1",
            inferred_at=NOW,
        )
        records.append(row)
    write_partition(case.fs, case.root, DAY, pipeline_records_to_table(records))
    case.fs.invalidate_cache()
    return uris


@pytest.mark.slow
def test_export_writes_index_images_and_overlays(bucket: BucketCase, kit: Kit) -> None:
    uris = _seed_night(bucket, kit)
    result = export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=3)

    assert result.candidates == 4 and result.rows == 3  # the 4 flagged, capped at 3
    assert result.by_reason == {SMALL_MARGIN: 3, LOW_CONFIDENCE: 3}
    folder = review_folder(bucket.root, DAY)
    with bucket.fs.open(f"{folder}/index.csv", "rb") as f:
        index = pd.read_csv(f)
    assert list(index.columns[:3]) == ["image", "label", "mask"]
    assert set(index["image"]) <= {uris[i] for i in (1, 3, 5, 7)}
    assert list(index["rank"]) == [1, 2, 3]
    assert list(index["margin"]) == sorted(index["margin"])  # one stratum: by uncertainty
    top3 = json.loads(index["top3"][0])
    assert [c for c, _ in top3] == ["particle", "bridge", "good"]
    columns = (index["review_image"], index["overlay"], index["image"])
    for copy, overlay, image in zip(*columns, strict=True):
        assert bucket.fs.cat_file(copy) == bucket.fs.cat_file(image)
        png = Image.open(io.BytesIO(bucket.fs.cat_file(overlay)))
        assert png.size == (kit.IMAGE_SIZE, kit.IMAGE_SIZE) and png.mode == "RGB"
    assert len(pd.read_parquet(io.BytesIO(bucket.fs.cat_file(f"{folder}/index.parquet")))) == 3
    assert not bucket.fs.exists(f"{bucket.root}/_staging/review") or not bucket.fs.find(
        f"{bucket.root}/_staging/review"
    )

    again = export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=1)  # stale files go
    bucket.fs.invalidate_cache()
    assert again.rows == 1
    assert len(bucket.fs.find(f"{folder}/images")) == len(bucket.fs.find(f"{folder}/overlays")) == 1


@pytest.mark.slow
def test_export_of_a_night_without_doubt_writes_nothing(bucket: BucketCase, kit: Kit) -> None:
    _seed_night(bucket, kit)
    strict = ReviewRule(margin=0.0, min_probability=0.0)
    calm = export_review(bucket.fs, bucket.root, DAY, rule=strict, limit=10)
    assert calm.rows == 4  # needs_review set by the model while confident: mask_disagrees
    assert calm.by_reason == {MASK_DISAGREES: 4}
    empty = export_review(bucket.fs, bucket.root, dt.date(2026, 11, 5), rule=RULE, limit=10)
    assert empty.index_uri is None and empty.rows == 0


@pytest.mark.slow
def test_a_full_disk_during_export_fails_it_whole_and_keeps_the_last_export(
    bucket: BucketCase, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ENOSPC on every staged copy read as "no current row needs review", exit 0;
    on a partial failure the rows left out also lost their earlier copies as "stale"."""
    import errno

    from faults import Fault, inject_faults

    _seed_night(bucket, kit)
    first = export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=3)
    folder = review_folder(bucket.root, DAY)
    bucket.fs.invalidate_cache()
    before = sorted(bucket.fs.find(folder))
    (full,) = inject_faults(
        monkeypatch, bucket.fs, Fault.enospc("*_staging/review/*", nth=2, times=1000)
    )
    with pytest.raises(OSError) as caught:
        export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=4)
    assert caught.value.errno == errno.ENOSPC and full.fired
    bucket.fs.invalidate_cache()
    assert sorted(bucket.fs.find(folder)) == before  # the last export, whole
    with bucket.fs.open(f"{folder}/index.csv", "rb") as f:
        assert len(pd.read_csv(f)) == first.rows


@pytest.mark.slow
def test_an_image_gone_since_the_night_is_named_and_the_cli_says_so(
    bucket: BucketCase, kit: Kit
) -> None:
    """A file deleted from raw/ since it was predicted is bad input, not an outage: that row
    is skipped and named, the others exported."""
    uris = _seed_night(bucket, kit)
    bucket.fs.rm(uris[1])
    bucket.fs.invalidate_cache()
    result = export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=4)
    assert result.rows == 3 and len(result.problems) == 1
    assert uris[1] in result.problems[0] and "cannot fetch" in result.problems[0]


# --------------------------------------------------------------------------- import


def _decisions(tmp_path: Path, index: pd.DataFrame, kit: Kit) -> Path:
    """The engineer's edit of the index: labels, one corrected mask, two bad rows."""
    decided = index[["image", "label", "mask"]].copy().astype(object)
    decided.loc[0, "label"] = " Bridge "
    mask = np.zeros((kit.IMAGE_SIZE, kit.IMAGE_SIZE), dtype=np.uint8)
    mask[5:9, 5:9] = 255
    Image.fromarray(mask).save(tmp_path / "fixed.png")
    decided.loc[0, "mask"] = "fixed.png"
    decided.loc[1, "label"] = "particle"
    Image.fromarray(mask[:10]).save(tmp_path / "small.png")
    decided.loc[2, "label"] = "particle"
    decided.loc[2, "mask"] = "small.png"  # another size: rejected
    extra = pd.DataFrame(
        [
            {"image": "/etc/passwd", "label": "good", "mask": None},  # leaves the bucket
            {"image": decided.loc[1, "image"], "label": "good", "mask": "fixed.png"},
            {"image": decided.loc[1, "image"].replace(".png", "-gone.png"), "label": "particle"},
        ]
    )
    decided = pd.concat([decided, extra], ignore_index=True)
    path = tmp_path / "decisions.csv"
    decided.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_import_appends_checked_decisions_to_confirmed(
    bucket: BucketCase, kit: Kit, tmp_path: Path
) -> None:
    _seed_night(bucket, kit, n=10)
    export_review(bucket.fs, bucket.root, DAY, rule=RULE, limit=4)
    folder = review_folder(bucket.root, DAY)
    with bucket.fs.open(f"{folder}/index.csv", "rb") as f:
        index = pd.read_csv(f)
    source = _decisions(tmp_path, index, kit)

    result = import_review(bucket.fs, bucket.root, str(source), reviewer="ana", now=NOW)

    assert result.imported == 2 and result.masks == 1 and result.unreviewed == 1
    assert len(result.rejected) == 4
    assert "row 3" in result.rejected[0] and "is 10x64 (HxW)" in result.rejected[0]
    assert "row 5" in result.rejected[1] and "absolute path" in result.rejected[1]
    assert "row 6" in result.rejected[2] and "label good" in result.rejected[2]
    assert "row 7" in result.rejected[3] and "column 'image'" in result.rejected[3]
    assert "-gone.png' is not in the bucket" in result.rejected[3]
    assert result.relabelled == [f"{source} row 1: label ' Bridge ' read as 'bridge'"]
    shots = load_confirmed(bucket.fs, bucket.root)
    assert not shots.rejected
    frame = shots.frame.set_index("image_uri")
    assert frame.loc[index["image"][0], "label"] == "bridge"
    assert frame.loc[index["image"][1], "label"] == "particle"
    assert set(frame["reviewer"]) == {"ana"}
    mask_uri = frame.loc[index["image"][0], "mask_uri"]
    assert "/confirmed/masks/" in mask_uri
    saved = np.asarray(Image.open(io.BytesIO(bucket.fs.cat_file(mask_uri))))
    assert saved.shape == (kit.IMAGE_SIZE, kit.IMAGE_SIZE) and int((saved > 0).sum()) == 16
    assert pd.isna(frame.loc[index["image"][1], "mask_uri"])


def test_import_names_a_file_it_cannot_use(bucket: BucketCase, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("img,lbl\nx,y\n")
    with pytest.raises(ReviewImportError, match="lack column"):
        import_review(bucket.fs, bucket.root, str(bad), reviewer="ana")
    with pytest.raises(ReviewImportError, match="cannot be read") as info:
        import_review(bucket.fs, bucket.root, "review/none.csv", reviewer="ana")
    assert "neither a local file" in str(info.value) and "nor in the bucket" in str(info.value)


# --------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_review_commands_export_then_import(
    kit: Kit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    empty_registry: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from semclip.cli import main
    from semclip.io.bucket import open_bucket

    url = f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, create=True)
    kit.use_environment(monkeypatch, tmp_path / "home", url, None, empty_registry)
    monkeypatch.setenv("SEMCLIP_CLASS_CODES", "particle=3")
    case = type("Case", (), {"fs": fs, "root": root})()
    _seed_night(case, kit)  # type: ignore[arg-type]

    assert main(["review", "export", "--date", DAY.isoformat(), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 rows needing review exported" in out and "small_margin 2" in out
    index = pd.read_csv(f"{review_folder(root, DAY)}/index.csv")
    index["label"] = ["scratch", None]
    decisions = tmp_path / "decisions.csv"
    index.to_csv(decisions, index=False)

    assert main(["review", "import", str(decisions), "--reviewer", "ana"]) == 0
    out = capsys.readouterr().out
    assert "1 decision(s) confirmed" in out and "1 row(s) without a label skipped" in out
    shots = load_confirmed(fs, root).frame
    assert list(shots["label"]) == ["scratch"] and list(shots["reviewer"]) == ["ana"]
    assert main(["review", "export", "--date", "2026-13-01"]) == 2
    # a date the nightly never ran is not "a clean night"
    assert main(["review", "export", "--date", "2026-01-05"]) == 0
    assert "2026-01-05: no predictions for this date" in capsys.readouterr().out
    assert main(["report", "--date", "2026-01-05"]) == 0
    assert "WARNING: no current rows in 2026-01-05..2026-01-05" in capsys.readouterr().out
    # an image gone from raw/ since the night: exported without it, named, exit 1
    gone = next(u for u in index["image"] if isinstance(u, str))
    fs.rm(fs._strip_protocol(gone))
    assert main(["review", "export", "--date", DAY.isoformat(), "--limit", "4"]) == 1
    out = capsys.readouterr().out
    assert "3 of 4 rows needing review exported" in out
    assert f"skipped {gone}: cannot fetch" in out


def test_report_sql_and_review_export_give_each_row_the_same_first_reason() -> None:
    """One rule, two readers: the yield report's ``review_reasons`` macro (DuckDB) and the
    review export's :func:`review_reasons` put every row under the same first reason."""
    import itertools

    import duckdb

    from semclip.report.views import register_report_views

    probability_sets = [
        {"good": 0.05, "particle": 0.9, "bridge": 0.05},  # sure
        {"good": 0.3, "particle": 0.45, "bridge": 0.25},  # low
        {"good": 0.02, "particle": 0.52, "bridge": 0.46},  # close
        {"particle": 0.41, "bridge": 0.4, "good": 0.19},  # low and close
        {"good": 1.0},  # one class
    ]
    rows = []
    for probs, cls, area, flagged, code in itertools.product(
        probability_sets, ["good", "particle"], [0, 10], [False, True], [None, 3, 7]
    ):
        rows.append(
            {
                "predicted_class": cls,
                "probabilities": probs,
                "defect_area_px": area,
                "needs_review": flagged,
                "klarf_classnumber": code,
                "error": None,
            }
        )
    rows.append({**rows[0], "predicted_class": None, "probabilities": None, "error": "bad"})
    import pyarrow as pa

    records = [
        {**r, "image_uri": f"file:///b/{i}.png", "model_name": "m", "model_version": "1"}
        for i, r in enumerate(rows)
    ]
    table = pa.Table.from_pylist(records, schema=PIPELINE_PREDICTION_SCHEMA)
    table = table.append_column("date", pa.array([DAY] * len(rows), pa.date32()))
    con = duckdb.connect()
    con.register("predictions_table", table)
    con.execute("CREATE VIEW predictions AS SELECT * FROM predictions_table")
    register_report_views(con)
    sql = dict(
        con.execute(
            "SELECT image_uri, review_reason "
            "FROM review_reasons(?, ?, ?, ?, class_codes := [1, 3])",
            [DAY, DAY, RULE.min_probability, RULE.margin],
        ).fetchall()
    )
    for i, r in enumerate(rows):
        reasons = review_reasons(r, RULE)
        expected = "error" if r["error"] else (reasons[0] if reasons else None)
        got = sql[f"file:///b/{i}.png"]
        assert got == expected, (r, got, reasons)
    # every reason occurs, so the comparison covers each branch of both readers
    assert set(sql.values()) == {*REASONS, "error", None}
    no_map = con.execute(
        "SELECT count(*) FROM review_reasons(?, ?, 0.5, 0.1) "
        "WHERE review_reason = 'unknown_klarf_code'",
        [DAY, DAY],
    ).fetchone()
    assert no_map == (0,)
