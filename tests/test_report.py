"""The yield report: named DuckDB macros, figures, Markdown + PNGs in the bucket.

Partitions are written with the real writer (``write_partition``) from rows whose counts are
known, so every figure is checked against numbers worked out by hand; one date is written in
the layout from before the KLARF columns, which the views must still read.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import replace
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest_storage import BucketCase
from PIL import Image

from semclip.io.partitions import write_partition
from semclip.io.pipeline_schema import KLARF_FIELDS, PIPELINE_PREDICTION_SCHEMA
from semclip.io.pipeline_schema import pipeline_records_to_table as to_table
from semclip.io.query import connect
from semclip.report import (
    REPORT_VIEWS_SQL,
    ReportRequest,
    gather,
    parse_date_range,
    register_report_views,
    render,
    write_report,
)
from semclip.report.publish import report_folder

pytest_plugins = ["conftest_storage"]

NIGHTS = [dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]
NOW = dt.datetime(2026, 11, 4, 3, 0, tzinfo=dt.UTC)


def _row(
    day: dt.date,
    i: int,
    cls: str,
    lot: str,
    wafer: str,
    *,
    top: float = 0.9,
    second: float | None = None,
    review: bool = False,
    version: str = "1",
    die: tuple[int, int] | None = (1, 2),
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(PIPELINE_PREDICTION_SCHEMA.names)
    uri = f"file:///b/raw/{day}/{lot}/{wafer}/D{i:04d}.png"
    second = (1 - top) / 2 if second is None else second
    other = "good" if cls != "good" else "particle"
    rest = {other: second, "scratch": 1 - top - second}
    row.update(image_uri=uri, image_sha256=f"{day}-{i}", model_name="semclip-sem")
    row.update(model_version=version, predicted_class=cls, probabilities={cls: top, **rest})
    row.update(needs_review=review, inferred_at=NOW, lot_id=lot, wafer_id=wafer)
    row.update(defect_id=f"D{i:04d}", defect_area_px=0 if cls == "good" else 12)
    if die is not None:
        row.update(die_x_index=die[0], die_y_index=die[1], x_rel_um=2500.0, y_rel_um=1000.0)
        row.update(die_pitch_x_um=5000.0, die_pitch_y_um=4000.0, klarf_defect_id=i)
        row.update(klarf_classnumber=17, klarf_step="M1_CMP", klarf_tool="KLA 2367 T1")
    return row


def _night3() -> list[dict[str, Any]]:
    """The report night: L1/W01 3 particle + 1 bridge + 1 good, L2/W05 2 bridge + 1 particle.

    Review: a low-confidence particle (0.4 vs 0.3: also a small margin), a small-margin bridge
    (0.55 vs 0.45), a needs_review with a confident class (mask disagrees).
    """
    d = NIGHTS[2]
    return [
        _row(d, 1, "particle", "L1", "W01", die=(0, 0)),
        _row(d, 2, "particle", "L1", "W01", die=(1, 0)),
        _row(d, 3, "particle", "L1", "W01", top=0.4, second=0.3, review=True, die=(2, 1)),
        _row(d, 4, "bridge", "L1", "W01", top=0.95, review=True, die=(1, 1)),
        _row(d, 5, "good", "L1", "W01", die=None),
        _row(d, 6, "bridge", "L2", "W05", die=(0, 1)),
        _row(d, 7, "bridge", "L2", "W05", top=0.55, second=0.45, die=(3, 3)),
        _row(d, 8, "particle", "L2", "W05", die=(2, 2)),
    ]


def _seed(case: BucketCase) -> None:
    fs, root = case.fs, case.root
    # night 1, written before the KLARF columns existed: 2 particles on one wafer
    old = to_table([_row(NIGHTS[0], i, "particle", "L1", "W01", die=None) for i in (1, 2)])
    old = old.drop_columns([f.name for f in KLARF_FIELDS])
    path = f"{root}/predictions/date={NIGHTS[0]}/part-0.parquet"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(old, f)
    # night 2: 1 bridge on each of 2 wafers
    write_partition(
        fs,
        root,
        NIGHTS[1],
        to_table(
            [_row(NIGHTS[1], 1, "bridge", "L1", "W01"), _row(NIGHTS[1], 2, "bridge", "L1", "W02")]
        ),
    )
    # night 3, plus an older version's row of image 1 (history: must not count)
    rows = _night3() + [{**_row(NIGHTS[2], 1, "bridge", "L1", "W01"), "model_version": "0"}]
    write_partition(fs, root, NIGHTS[2], to_table(rows))


@pytest.fixture
def seeded(bucket: BucketCase) -> BucketCase:
    _seed(bucket)
    return bucket


def test_old_partitions_read_with_null_klarf_columns(seeded: BucketCase) -> None:
    con = connect(seeded.fs, seeded.root, [NIGHTS[0]])  # only the old layout
    got = con.sql(
        "SELECT klarf_classnumber, klarf_step, die_pitch_x_um FROM predictions"
    ).fetchall()
    assert got == [(None, None, None), (None, None, None)]
    con = connect(seeded.fs, seeded.root, NIGHTS)  # old and new: union by name
    codes = con.sql(
        'SELECT "date", count(klarf_classnumber) FROM predictions GROUP BY ALL ORDER BY 1'
    ).fetchall()
    assert codes == [(NIGHTS[0], 0), (NIGHTS[1], 2), (NIGHTS[2], 7)]


@pytest.mark.slow
def test_macros_give_the_figures_worked_out_by_hand(seeded: BucketCase) -> None:
    con = register_report_views(
        connect(seeded.fs, seeded.root, NIGHTS, champion=("semclip-sem", "1"))
    )
    day = str(NIGHTS[2])
    pareto = con.sql(f"SELECT * FROM defect_pareto('{day}', '{day}')").fetchall()
    # 4 particle, 3 bridge (good left out); image 1's v0 bridge row is history
    assert pareto == [("particle", 4, 4 / 7, 4 / 7), ("bridge", 3, 3 / 7, 1.0)]
    by_lot = con.sql(
        f"SELECT lot_id, predicted_class, n FROM defect_pareto_by_lot('{day}', '{day}')"
    )
    assert by_lot.fetchall() == [
        ("L1", "particle", 3),
        ("L1", "bridge", 1),
        ("L2", "bridge", 2),
        ("L2", "particle", 1),
    ]
    counts = con.sql(f"SELECT * FROM defect_counts('{day}', '{day}')").fetchall()
    assert counts == [
        ("L1", "W01", "bridge", 1),
        ("L1", "W01", "good", 1),
        ("L1", "W01", "particle", 3),
        ("L2", "W05", "bridge", 2),
        ("L2", "W05", "particle", 1),
    ]
    trend = con.sql(
        f'SELECT "date", predicted_class, n, wafers, defects_per_wafer '
        f"FROM defect_density_trend('{day}', 3)"
    ).fetchall()
    assert trend == [
        (NIGHTS[0], "particle", 2, 1, 2.0),
        (NIGHTS[1], "bridge", 2, 2, 1.0),
        (NIGHTS[2], "bridge", 3, 2, 1.5),
        (NIGHTS[2], "particle", 4, 2, 2.0),
    ]
    review = con.sql(f"SELECT * FROM review_share('{day}', '{day}', 0.5, 0.2)").fetchall()
    # each row under its first reason, in the review export's order: small margin first
    assert review == [("small_margin", 2, 2 / 8), ("mask_disagrees", 1, 1 / 8)]
    no_margin = con.sql(f"SELECT review_reason, n FROM review_share('{day}', '{day}', 0.5, NULL)")
    assert no_margin.fetchall() == [("low_confidence", 1), ("mask_disagrees", 1)]
    known = f"review_share('{day}', '{day}', 0.5, 0.2, class_codes := [17])"
    assert con.sql(f"SELECT * FROM {known}").fetchall() == review
    # CLASSNUMBER 17 on the 7 rows with KLARF data is not in this map; the good row has none
    unknown = f"review_share('{day}', '{day}', 0.5, 0.2, class_codes := [5])"
    assert con.sql(f"SELECT review_reason, n FROM {unknown}").fetchall() == [
        ("unknown_klarf_code", 7),
    ]
    point = con.sql(
        f"SELECT die_x, die_y FROM wafer_map_points('{day}', '{day}') "
        "WHERE image_uri LIKE '%D0008%'"
    ).fetchall()
    assert point == [(2.5, 2.25)]  # die (2, 2) + 2500/5000, 1000/4000


def test_the_documented_sql_text_is_what_registers(seeded: BucketCase) -> None:
    """A user pasting REPORT_VIEWS_SQL into their own session gets the same Pareto."""
    con = connect(seeded.fs, seeded.root, NIGHTS)
    con.execute(REPORT_VIEWS_SQL)
    assert con.sql("SELECT predicted_class, n FROM defect_pareto(NULL, NULL)").fetchall() == [
        ("particle", 6),
        ("bridge", 5),
    ]


@pytest.mark.slow
def test_report_filters_lots_and_wafers(seeded: BucketCase) -> None:
    request = ReportRequest(NIGHTS[2], NIGHTS[2], wafers=("L2/W05",), nights=3)
    data = gather(seeded.fs, seeded.root, request)
    assert data.rows == 3
    assert [(r["predicted_class"], r["n"]) for r in data.pareto] == [("bridge", 2), ("particle", 1)]
    data = gather(seeded.fs, seeded.root, ReportRequest(NIGHTS[2], NIGHTS[2], lots=("L1",)))
    assert data.rows == 5 and {r["lot_id"] for r in data.counts} == {"L1"}


@pytest.mark.slow
def test_report_writes_markdown_and_pngs_with_the_banner(seeded: BucketCase) -> None:
    request = ReportRequest(NIGHTS[1], NIGHTS[2], nights=3, standard_nights=3, review_margin=0.2)
    data = gather(
        seeded.fs, seeded.root, request, random_backbone=lambda name, version: version == "1"
    )
    report = render(data)
    assert report.random_backbone and "RANDOM-WEIGHT BACKBONE" in report.markdown
    assert sorted(report.images) == [
        "pareto.png",
        "pareto_lot_L1.png",
        "pareto_lot_L2.png",
        "trend.png",
        "wafer_L1_W01.png",
        "wafer_L1_W02.png",
        "wafer_L2_W05.png",
    ]
    for png in report.images.values():
        assert Image.open(io.BytesIO(png)).format == "PNG"
    # over both nights: bridge 2 + 3, particle 4 (the good row is no defect)
    assert "| bridge | 5 | 55.6% | 55.6% |\n| particle | 4 | 44.4% | 100.0% |" in report.markdown
    assert "3 of 10 rows (30.0%) need review" in report.markdown
    # the class-code map of review export: CLASSNUMBER 17 is not in it, so 9 of the 10 rows
    coded = gather(seeded.fs, seeded.root, replace(request, class_codes=frozenset({5})))
    assert [(r["review_reason"], r["n"]) for r in coded.review] == [("unknown_klarf_code", 9)]
    assert "unknown_klarf_code | 9 |" in render(coded).markdown
    # a stale file from an earlier report of the label goes; the folder is this report
    folder = report_folder(seeded.root, "2026-11-02..2026-11-03")
    seeded.fs.pipe_file(f"{folder}/wafer_OLD.png", b"stale")
    written = write_report(seeded.fs, seeded.root, report)
    assert written[-1].endswith("reports/date=2026-11-02..2026-11-03/report.md")
    names = sorted(p.rsplit("/", 1)[-1] for p in seeded.fs.find(folder))
    assert names == sorted([*report.images, "report.md"])
    assert seeded.fs.cat_file(f"{folder}/report.md").decode() == report.markdown
    assert seeded.fs.find(f"{seeded.root}/_staging/reports") == []  # nothing staged is left
    pretrained = render(gather(seeded.fs, seeded.root, request, random_backbone=lambda n, v: False))
    assert "RANDOM" not in pretrained.markdown


@pytest.mark.slow
def test_a_narrowed_report_never_replaces_the_standard_one(seeded: BucketCase) -> None:
    """A hand-run report for some lots, some wafers or another trend window goes to a folder of
    its own; the date's standard report (the nightly's) keeps every file, byte for byte."""
    fs, root = seeded.fs, seeded.root
    standard = ReportRequest(NIGHTS[2], NIGHTS[2])
    write_report(fs, root, render(gather(fs, root, standard)))
    folder = report_folder(root, "2026-11-03")
    before = {p: fs.cat_file(p) for p in fs.find(folder)}
    assert len(before) > 2  # report.md and its PNGs
    narrowed = [
        replace(standard, lots=("L1", "NOPE")),
        replace(standard, wafers=("L2/W05",)),
        replace(standard, nights=3),
    ]
    labels = [r.label for r in narrowed]
    assert labels == ["2026-11-03_lots=L1+NOPE", "2026-11-03_wafers=L2-W05", "2026-11-03_nights=3"]
    for request in narrowed:
        data = gather(fs, root, request)
        written = write_report(fs, root, render(data))
        assert written[-1].endswith(f"reports/date={request.label}/report.md")
    assert {p: fs.cat_file(p) for p in fs.find(folder)} == before
    # the lot nobody scanned is said, not an empty section left to be read as "no defects"
    data = gather(fs, root, narrowed[0])
    assert data.unmatched_lots == ["NOPE"] and data.unmatched_wafers == []
    assert "No rows in these dates for lot NOPE" in render(data).markdown
    each_on_its_own = gather(fs, root, replace(standard, lots=("L1",), wafers=("L2/W05",)))
    assert each_on_its_own.rows == 0  # L2/W05 is not in L1 ...
    assert (
        each_on_its_own.unmatched_lots == each_on_its_own.unmatched_wafers == []
    )  # ... but both exist
    missing = gather(fs, root, replace(standard, wafers=("L9/W01", "W05")))
    assert missing.unmatched_wafers == ["L9/W01"]


def test_report_labels_name_what_narrows_them() -> None:
    day = dt.date(2026, 11, 3)
    assert ReportRequest(day, day).label == "2026-11-03"
    assert ReportRequest(day, day, nights=14, standard_nights=14).label == "2026-11-03"
    assert ReportRequest(day, day, nights=14).label == "2026-11-03_nights=14"
    two = ReportRequest(day - dt.timedelta(days=1), day, lots=("A 1", "B'2"), wafers=("A 1/W3",))
    assert two.label == "2026-11-02..2026-11-03_lots=A-1+B-2_wafers=A-1-W3"
    many = ReportRequest(day, day, lots=tuple(f"LOT{i:04d}" for i in range(40)))
    other = ReportRequest(day, day, lots=tuple(f"LOT{i:04d}" for i in range(41)))
    assert len(many.label) < 120 and many.label != other.label
    assert many.label.startswith("2026-11-03_lots=LOT0000+LOT0001+")


@pytest.mark.parametrize(
    ("date", "dates", "expected"),
    [
        ("2026-11-01", None, (dt.date(2026, 11, 1), dt.date(2026, 11, 1))),
        (None, "2026-11-01..2026-11-07", (dt.date(2026, 11, 1), dt.date(2026, 11, 7))),
    ],
)
def test_date_options(date: str | None, dates: str | None, expected: tuple) -> None:
    assert parse_date_range(date, dates) == expected


@pytest.mark.parametrize(
    ("date", "dates", "message"),
    [
        (None, None, "exactly one"),
        ("2026-11-01", "2026-11-01..2026-11-02", "exactly one"),
        ("2026-13-01", None, "--date '2026-13-01' is not a date"),
        (None, "2026-11-01", "YYYY-MM-DD..YYYY-MM-DD"),
        (None, "2026-11-05..2026-11-01", "after the last"),
    ],
)
def test_bad_date_options_are_named(date: str | None, dates: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_date_range(date, dates)
