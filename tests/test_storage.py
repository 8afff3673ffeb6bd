"""Object storage on a local folder and on S3 (moto): listing, ids, KLARF join, confirmed
shots, quarantine and the idempotent prediction partition."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from faults import Fault, inject_faults

from semclip.io.bucket import BucketNotFoundError, open_bucket
from semclip.io.confirmed import ConfirmedShotsError, load_confirmed, read_confirmed
from semclip.io.klarf_join import describe_images, find_klarf
from semclip.io.partitions import (
    existing_keys,
    predictions_dataset,
    read_partition,
    write_partition,
)
from semclip.io.paths import (
    date_prefix,
    links_outside_bucket,
    list_raw_images,
    parse_ids,
    raw_listing,
)
from semclip.io.pipeline_schema import (
    PIPELINE_FIELDS,
    PIPELINE_PREDICTION_SCHEMA,
    QUARANTINE_SCHEMA,
    pipeline_records_to_table,
    quarantine_records_to_table,
)
from semclip.io.quarantine import read_quarantine, write_quarantine
from semclip.io.schema import PREDICTION_SCHEMA
from semclip.settings import DEFAULT_PATH_REGEX

if TYPE_CHECKING:
    from conftest_storage import BucketCase

pytest_plugins = ["conftest_storage"]  # bucket fixtures on a local folder and on moto S3

DAY = dt.date(2026, 11, 1)
NEXT_DAY = dt.date(2026, 11, 2)
NOW = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)


def _put(case: BucketCase, relative: str, data: bytes = b"img") -> str:
    case.fs.pipe_file(f"{case.root}/{relative}", data)
    return case.fs.unstrip_protocol(f"{case.root}/{relative}")


def _row(uri: str, sha: str | None, version: str = "1", cls: str = "particle") -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in PIPELINE_PREDICTION_SCHEMA.names}
    row.update(image_uri=uri, image_sha256=sha, model_name="semclip-sem", model_version=version)
    row.update(predicted_class=cls, inferred_at=NOW, flow_run_id="run-1", lot_id="L1")
    return row


def _table(*rows: dict[str, Any]) -> pa.Table:
    return pipeline_records_to_table(rows)


def _content(table: pa.Table) -> list[tuple[str, str | None, str, str | None]]:
    cols = ("image_uri", "image_sha256", "model_version", "predicted_class")
    return sorted(zip(*(table.column(c).to_pylist() for c in cols), strict=True), key=str)


# --------------------------------------------------------------------------- bucket


def test_missing_bucket_is_a_clear_error(missing_bucket: tuple[str, str | None]) -> None:
    url, endpoint = missing_bucket
    with pytest.raises(BucketNotFoundError, match="does not exist") as info:
        open_bucket(url, endpoint_url=endpoint)
    name = url.removeprefix("s3://").removeprefix("file://")
    assert name in str(info.value)
    fs, root = open_bucket(url, endpoint_url=endpoint, create=True)  # the demo creates it
    assert fs.exists(root)


def test_bucket_prefix_inside_existing_bucket(bucket: BucketCase) -> None:
    if bucket.kind == "file":  # a local bucket is its folder; S3 prefixes need not exist
        bucket.fs.makedirs(f"{bucket.root}/site-a")
    fs, root = open_bucket(f"{bucket.url}/site-a/", endpoint_url=bucket.endpoint_url)
    assert root == f"{bucket.root}/site-a"


# --------------------------------------------------------------------------- raw listing


def test_lists_only_that_dates_images(bucket: BucketCase) -> None:
    wanted = [
        _put(bucket, "raw/2026-11-01/L1/W1/D002.PNG"),
        _put(bucket, "raw/2026-11-01/L1/W1/D001.tif"),
        _put(bucket, "raw/2026-11-01/L2/W3/D9.jpeg"),
        _put(bucket, "raw/2026-11-01/tool/L2/W3/D10.tiff"),
        _put(bucket, "raw/2026-11-01/x.jpg"),
        _put(bucket, "raw/2026-11-01/L3/W1/D7.bmp"),  # what semclip predict and fit read too
    ]
    _put(bucket, "raw/2026-11-01/L1/W1/W1.klarf", b"LotID L1;")
    _put(bucket, "raw/2026-11-01/L1/W1/LOT1.000", b"LotID L1;")
    notes = _put(bucket, "raw/2026-11-01/L1/W1/notes.txt")
    fork = _put(bucket, "raw/2026-11-01/L1/W1/._D001.tif")  # a macOS resource fork
    hidden = _put(bucket, "raw/2026-11-01/.trash/L1/W1/D001.png")
    _put(bucket, "raw/2026-11-02/L1/W1/D003.png")
    _put(bucket, "raw/2026-11-01-rerun/L1/W1/D004.png")
    _put(bucket, "raw/2026-11-0/L1/W1/D005.png")
    _put(bucket, "confirmed/2026-11-01/L1/W1/D006.png")
    assert list_raw_images(bucket.fs, bucket.root, DAY) == sorted(wanted)
    assert list_raw_images(bucket.fs, bucket.root, dt.date(2026, 10, 31)) == []
    images, ignored = raw_listing(bucket.fs, bucket.root, DAY)
    assert images == sorted(wanted)  # every other file of the date is said, KLARFs aside
    assert ignored == {
        "hidden file": sorted([fork, hidden]),
        "not an image type semclip reads (.txt)": [notes],
    }


def test_new_objects_are_seen_after_an_earlier_listing(bucket: BucketCase) -> None:
    first = _put(bucket, "raw/2026-11-01/L1/W1/D001.png")
    assert list_raw_images(bucket.fs, bucket.root, DAY) == [first]
    bucket.fs.ls(f"{bucket.root}/raw/2026-11-01/L1/W1")  # fill the listing cache as well
    later = f"{bucket.root}/raw/2026-11-01/L1/W1/D002.png"
    bucket.other_client().pipe_file(later, b"img")  # dropped by another process
    assert list_raw_images(bucket.fs, bucket.root, DAY) == [
        first,
        bucket.fs.unstrip_protocol(later),
    ]
    folder = f"{bucket.root}/raw/2026-11-01/L1/W1"
    assert find_klarf(bucket.fs, folder) == []  # s3fs caches this directory listing
    bucket.other_client().pipe_file(f"{folder}/W1.klarf", b"LotID L1;")
    assert find_klarf(bucket.fs, folder) == [f"{folder}/W1.klarf"]


# --------------------------------------------------------------------------- ids from paths


def test_parse_ids_from_the_path_below_the_date(bucket: BucketCase) -> None:
    prefix = date_prefix(bucket.fs, bucket.root, DAY)
    assert prefix.endswith("/raw/2026-11-01/")
    uri = prefix + "LOT42/W07/D0013.tif"
    assert parse_ids(uri, DEFAULT_PATH_REGEX, prefix) == {
        "lot_id": "LOT42",
        "wafer_id": "W07",
        "defect_id": "D0013",
    }
    deeper = parse_ids(prefix + "eDR7380/LOT42/W07/D0013.tif", DEFAULT_PATH_REGEX, prefix)
    assert deeper["lot_id"] == "LOT42"  # '$'-anchored search takes the last folders
    flat = parse_ids(prefix + "loose.png", DEFAULT_PATH_REGEX, prefix)
    assert flat == {"lot_id": None, "wafer_id": None, "defect_id": None}
    partial = parse_ids(prefix + "LOT1_d17.png", r"(?P<lot_id>[^_/]+)_d(?P<defect_id>\d+)\.png$")
    assert partial == {"lot_id": "LOT1", "wafer_id": None, "defect_id": "17"}


# --------------------------------------------------------------------------- KLARF beside images

_KLARF = """\
LotID "LOT42";
WaferID "W07";
TiffFileName review_0007.tif;
DefectRecordSpec 8 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER IMAGECOUNT IMAGELIST;
DefectList
 13 1234.5 678.9 3 -2 17 1 1 1 0
 14 10.0 20.0 4 5 0 0 0;
EndOfFile;
"""


def test_klarf_fills_positions_by_defect_id_and_file_name(bucket: BucketCase) -> None:
    _put(bucket, "raw/2026-11-01/LOT42/W07/W07.000", _KLARF.encode())
    _put(bucket, "raw/2026-11-01/LOT42/W07/broken.klarf", b"DefectList 1 2;")
    by_id = _put(bucket, "raw/2026-11-01/LOT42/W07/D0014.png")
    by_name = _put(bucket, "raw/2026-11-01/LOT42/W07/review_0007.tif")
    unknown = _put(bucket, "raw/2026-11-01/LOT42/W07/D0099.png")
    elsewhere = _put(bucket, "raw/2026-11-01/LOT43/W01/D0013.png")
    folder = f"{bucket.root}/raw/2026-11-01/LOT42/W07"
    assert [p.rsplit("/", 1)[1] for p in find_klarf(bucket.fs, folder)] == [
        "W07.000",
        "broken.klarf",
    ]
    images = list_raw_images(bucket.fs, bucket.root, DAY)
    described = describe_images(bucket.fs, bucket.root, DAY, images, DEFAULT_PATH_REGEX)
    assert len(described.klarf_errors) == 1 and "broken.klarf:1" in described.klarf_errors[0]
    f = described.fields
    assert f[by_id] == {
        "lot_id": "LOT42",
        "wafer_id": "W07",
        "defect_id": "D0014",
        "die_x_index": 4,
        "die_y_index": 5,
        "x_rel_um": 10.0,
        "y_rel_um": 20.0,
        "klarf_defect_id": 14,  # the KLARF's own fields, beside the path's defect_id
        "klarf_classnumber": 0,
        "klarf_step": None,  # this KLARF has no StepID, InspectionStationID or DiePitch
        "klarf_tool": None,
        "die_pitch_x_um": None,
        "die_pitch_y_um": None,
    }
    assert f[by_name]["klarf_classnumber"] == 17
    assert f[unknown]["klarf_defect_id"] is None
    # the path regex gives defect_id "review_0007"; the file name finds defect 13
    assert (f[by_name]["die_x_index"], f[by_name]["x_rel_um"]) == (3, 1234.5)
    assert f[unknown]["die_x_index"] is None and f[unknown]["lot_id"] == "LOT42"
    assert f[elsewhere]["die_x_index"] is None  # a KLARF only describes its own folder


# --------------------------------------------------------------------------- confirmed shots


def test_read_confirmed_csv_and_parquet(bucket: BucketCase) -> None:
    base = bucket.fs.unstrip_protocol(bucket.root)
    csv = (
        "image_uri,label,confirmed_at,reviewer,comment\n"
        "raw/2026-11-01/L1/W1/D1.png,particle,2026-11-01T08:00:00Z,ana,ok\n"
        f"{base}/raw/2026-11-01/L1/W1/D2.png,scratch,2026-11-01 09:00:00,ben,\n"  # a full URI
    )
    _put(bucket, "confirmed/2026/11/week44.csv", csv.encode())
    relabel = pa.table(
        {
            "image_uri": ["raw/2026-11-01/L1/W1/D1.png", "raw/2026-11-01/L1/W1/D3.png"],
            "label": ["residue", "particle"],
            "mask_uri": ["masks/D1.png", None],
            "confirmed_at": pa.array(
                [dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC), dt.datetime(2026, 10, 30, 10)],
                pa.timestamp("us", tz="UTC"),
            ),
            "reviewer": ["carl", "dana"],
        }
    )
    bucket.fs.pipe_file(f"{bucket.root}/confirmed/relabel.parquet", _parquet_bytes(relabel))
    shots = read_confirmed(bucket.fs, bucket.root)
    assert list(shots.columns) == [
        "image_uri",
        "label",
        "mask_uri",
        "confirmed_at",
        "reviewer",
        "source_uri",
    ]
    assert shots["image_uri"].tolist() == [  # newest first, one row per image
        f"{base}/raw/2026-11-01/L1/W1/D1.png",
        f"{base}/raw/2026-11-01/L1/W1/D2.png",
        f"{base}/raw/2026-11-01/L1/W1/D3.png",
    ]
    assert shots["label"].tolist() == ["residue", "scratch", "particle"]  # the re-review wins
    assert shots["mask_uri"].tolist() == [f"{base}/masks/D1.png", None, None]
    assert str(shots["confirmed_at"].dtype) == "datetime64[ns, UTC]"
    assert shots["confirmed_at"].iloc[1] == pd.Timestamp("2026-11-01T09:00:00Z")
    assert shots["source_uri"].iloc[1].endswith("confirmed/2026/11/week44.csv")


def test_confirmed_rows_outside_the_bucket_are_left_out_and_named(
    bucket: BucketCase, tmp_path: Path
) -> None:
    base = bucket.fs.unstrip_protocol(bucket.root)
    (tmp_path / "secret.png").write_bytes(b"not the fab's")
    rows = [
        "raw/d/ok.png,particle,,2026-11-01,ana",  # row 1: fine
        "/etc/passwd,good,,2026-11-01,ana",  # row 2: absolute path
        "file:///etc/passwd,good,,2026-11-01,ana",  # row 3: a local file
        "confirmed/../../etc/passwd,good,,2026-11-01,ana",  # row 4: climbs out
        "s3://other-bucket/x.png,good,,2026-11-01,ana",  # row 5: another bucket
        "raw/d/ok2.png,scratch,../../masks/m.png,2026-11-01,ana",  # row 6: its mask climbs out
        "raw/d/ok3.png, Particle ,,2026-11-01,ana",  # row 7: fine, label respelt
    ]
    if bucket.kind == "file":  # row 8: a link inside a local bucket pointing out of it
        bucket.fs.makedirs(f"{bucket.root}/raw/d", exist_ok=True)
        os.symlink(tmp_path / "secret.png", f"{bucket.root}/raw/d/link.png")
        rows.append("raw/d/link.png,good,,2026-11-01,ana")
    header = "image_uri,label,mask_uri,confirmed_at,reviewer\n"
    source = _put(bucket, "confirmed/week44.csv", (header + "\n".join(rows) + "\n").encode())

    found = load_confirmed(bucket.fs, bucket.root)

    assert sorted(found.frame["image_uri"]) == [f"{base}/raw/d/ok.png", f"{base}/raw/d/ok3.png"]
    assert found.frame["label"].tolist() == ["particle", "particle"]
    where = [(r.row, r.column) for r in found.rejected]
    expected = [(2, "image_uri"), (3, "image_uri"), (4, "image_uri"), (5, "image_uri")]
    expected += [(6, "mask_uri")] + ([(8, "image_uri")] if bucket.kind == "file" else [])
    assert where == expected
    assert all(r.source_uri == source for r in found.rejected)
    assert f"{source} row 2, column image_uri '/etc/passwd': absolute path" in str(
        found.rejected[0]
    )
    assert "outside the root" in found.rejected[3].reason  # s3://other-bucket/x.png
    if bucket.kind == "file":
        assert "secret.png" in found.rejected[-1].reason
        assert "not followed" in found.rejected[-1].reason
    assert found.rejected[0].to_dict()["row"] == 2
    assert [(c.written, c.label, c.where) for c in found.relabelled] == [
        (" Particle ", "particle", f"{source} row 7")
    ]
    assert read_confirmed(bucket.fs, bucket.root).equals(found.frame)


def test_raw_links_out_of_a_local_bucket_are_found(bucket: BucketCase, tmp_path: Path) -> None:
    inside = _put(bucket, "raw/2026-11-01/L1/W1/D001.png")
    if bucket.kind == "file":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "D002.png").write_bytes(b"img")
        os.symlink(tmp_path / "elsewhere" / "D002.png", f"{bucket.root}/raw/2026-11-01/D002.png")
        os.symlink(tmp_path / "elsewhere", f"{bucket.root}/raw/2026-11-01/linked")
        os.symlink(
            bucket.fs._strip_protocol(inside), f"{bucket.root}/raw/2026-11-01/D003.png"
        )  # a link that stays inside is fine
    uris = list_raw_images(bucket.fs, bucket.root, DAY)
    reasons = links_outside_bucket(bucket.fs, bucket.root, uris)
    if bucket.kind == "s3":  # object stores have no links
        assert reasons == {} and uris == [inside]
        return
    base = bucket.fs.unstrip_protocol(f"{bucket.root}/raw/2026-11-01")
    assert sorted(reasons) == [f"{base}/D002.png"]
    assert all("outside the bucket" in r and "not followed" in r for r in reasons.values())
    assert not any("/linked/" in u for u in uris)  # a linked folder is not even listed
    assert inside in uris and f"{base}/D003.png" in uris and inside not in reasons


def test_read_confirmed_names_the_bad_file(bucket: BucketCase) -> None:
    assert read_confirmed(bucket.fs, bucket.root).empty
    _put(
        bucket,
        "confirmed/good.csv",
        b"image_uri,label,confirmed_at,reviewer\na.png,x,2026-11-01,r\n",
    )
    bad = _put(bucket, "confirmed/bad.csv", b"image_uri,class,confirmed_at\na.png,x,2026-11-01\n")
    with pytest.raises(ConfirmedShotsError, match=r"bad\.csv.*\['label', 'reviewer'\]"):
        read_confirmed(bucket.fs, bucket.root)
    bucket.fs.rm_file(bucket.fs._strip_protocol(bad))
    _put(
        bucket,
        "confirmed/empty_label.csv",
        b"image_uri,label,confirmed_at,reviewer\nb.png,,2026-11-01,r\n",
    )
    with pytest.raises(ConfirmedShotsError, match=r"empty_label\.csv.*empty label"):
        read_confirmed(bucket.fs, bucket.root)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# --------------------------------------------------------------------------- quarantine


def test_quarantine_is_written_per_date(bucket: BucketCase) -> None:
    assert write_quarantine(bucket.fs, bucket.root, DAY, []) is None
    uri = write_quarantine(
        bucket.fs,
        bucket.root,
        DAY,
        [
            {"image_uri": "s3://b/raw/x.png", "reason": "truncated PNG", "flow_run_id": "run-1"},
            {"image_uri": "s3://b/raw/y.tif", "reason": "not an image", "quarantined_at": NOW},
        ],
    )
    assert uri is not None and "/quarantine/date=2026-11-01/" in uri and uri.endswith(".parquet")
    write_quarantine(bucket.fs, bucket.root, DAY, [{"image_uri": "z", "reason": "again"}])
    table = read_quarantine(bucket.fs, bucket.root, DAY)
    assert table.schema.equals(QUARANTINE_SCHEMA)
    assert sorted(table.column("reason").to_pylist()) == ["again", "not an image", "truncated PNG"]
    assert read_quarantine(bucket.fs, bucket.root, NEXT_DAY).num_rows == 0


def test_rerunning_a_date_quarantines_each_input_once(bucket: BucketCase) -> None:
    first = [{"image_uri": "s3://b/raw/x.png", "reason": "truncated PNG", "flow_run_id": "run-1"}]
    assert write_quarantine(bucket.fs, bucket.root, DAY, first) is not None
    again = [
        {"image_uri": "s3://b/raw/x.png", "reason": "truncated PNG", "flow_run_id": "run-2"},
        {"image_uri": "s3://b/raw/x.png", "reason": "duplicate of y.png", "flow_run_id": "run-2"},
    ]
    assert write_quarantine(bucket.fs, bucket.root, DAY, again) is not None
    assert write_quarantine(bucket.fs, bucket.root, DAY, again) is None, "nothing new the 3rd time"
    table = read_quarantine(bucket.fs, bucket.root, DAY).sort_by("reason")
    assert table.column("reason").to_pylist() == ["duplicate of y.png", "truncated PNG"]
    assert table.column("flow_run_id").to_pylist() == ["run-2", "run-1"]


def test_full_disk_while_quarantining_leaves_no_cut_short_file(
    bucket: BucketCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the file was written in place, a full disk left half of it, and every later
    read of the date's quarantine raised ArrowInvalid: the date was wedged for good."""
    fs, root = bucket.fs, bucket.root
    write_quarantine(fs, root, DAY, [{"image_uri": "a", "reason": "truncated PNG"}])
    (full,) = inject_faults(monkeypatch, fs, Fault.enospc("*quarantine*", after_bytes=64))
    with pytest.raises(OSError) as caught:
        write_quarantine(fs, root, DAY, [{"image_uri": "b", "reason": "not an image"}])
    assert caught.value.errno == errno.ENOSPC and full.fired
    monkeypatch.undo()

    fs.invalidate_cache()
    assert len(fs.find(f"{root}/quarantine/date={DAY}")) == 1  # only the first, whole file
    assert read_quarantine(fs, root, DAY).column("image_uri").to_pylist() == ["a"]
    write_quarantine(fs, root, DAY, [{"image_uri": "b", "reason": "not an image"}])  # room again
    assert sorted(read_quarantine(fs, root, DAY).column("image_uri").to_pylist()) == ["a", "b"]


def test_a_damaged_quarantine_file_is_named_and_left_out_not_fatal(
    bucket: BucketCase, caplog: pytest.LogCaptureFixture
) -> None:
    """A file cut short by an older writer, or rotten: the date's other rows still read, the
    next write records its inputs again, and the log names the file."""
    fs, root = bucket.fs, bucket.root
    write_quarantine(fs, root, DAY, [{"image_uri": "kept", "reason": "truncated PNG"}])
    damaged = write_quarantine(fs, root, DAY, [{"image_uri": "lost", "reason": "not an image"}])
    assert damaged is not None
    path = fs._strip_protocol(damaged)
    fs.pipe_file(path, fs.cat_file(path)[:100])

    with caplog.at_level(logging.ERROR, logger="semclip.io.tables"):
        assert read_quarantine(fs, root, DAY).column("image_uri").to_pylist() == ["kept"]
    assert damaged in caplog.text and "not readable Parquet" in caplog.text
    write_quarantine(fs, root, DAY, [{"image_uri": "lost", "reason": "not an image"}])
    uris = sorted(read_quarantine(fs, root, DAY).column("image_uri").to_pylist())
    assert uris == ["kept", "lost"]


def test_quarantine_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        quarantine_records_to_table(
            [{"image_uri": "x", "reason": "r", "quarantined_at": dt.datetime(2026, 1, 1)}]
        )
    with pytest.raises(ValueError, match="unexpected field"):
        quarantine_records_to_table([{"image_uri": "x", "reason": "r", "why": "typo"}])
    with pytest.raises(ValueError, match="'reason'.*not null"):
        quarantine_records_to_table([{"image_uri": "x", "reason": None}])


# --------------------------------------------------------------------------- predictions


def test_pipeline_schema_extends_the_prediction_schema() -> None:
    names = PIPELINE_PREDICTION_SCHEMA.names
    assert names[: len(PREDICTION_SCHEMA)] == PREDICTION_SCHEMA.names
    assert names[len(PREDICTION_SCHEMA) :] == [
        "lot_id",
        "wafer_id",
        "defect_id",
        "die_x_index",
        "die_y_index",
        "x_rel_um",
        "y_rel_um",
        "flow_run_id",
        "inferred_at",
        "klarf_defect_id",
        "klarf_classnumber",
        "klarf_step",
        "klarf_tool",
        "die_pitch_x_um",
        "die_pitch_y_um",
    ]
    assert all(f.nullable and f.metadata[b"description"] for f in PIPELINE_FIELDS)
    assert PIPELINE_PREDICTION_SCHEMA.field("inferred_at").type == pa.timestamp("us", tz="UTC")
    assert PIPELINE_PREDICTION_SCHEMA.metadata == PREDICTION_SCHEMA.metadata


def test_pipeline_records_are_checked() -> None:
    row = _row("a", "s")
    with pytest.raises(ValueError, match="record 0: field 'die_x_index'"):
        _table({**row, "die_x_index": 1.5})
    with pytest.raises(ValueError, match="timezone-aware"):
        _table({**row, "inferred_at": dt.datetime(2026, 11, 1)})
    with pytest.raises(ValueError, match=r"missing field\(s\) \['lot_id'\]"):
        _table({k: v for k, v in row.items() if k != "lot_id"})
    with pytest.raises(ValueError, match="'model_version'"):  # model columns checked too
        _table({**row, "model_version": None})


def test_partition_rewrite_is_idempotent_and_keeps_earlier_rows(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    assert read_partition(fs, root, DAY).num_rows == 0 and existing_keys(fs, root, DAY) == set()
    other_day = write_partition(fs, root, NEXT_DAY, _table(_row("n", "s9")))
    first = write_partition(
        fs,
        root,
        DAY,
        _table(_row("a", "s1"), _row("b", "s2"), _row("bad", None, cls=None)),
    )
    assert (first.rows_new, first.rows_kept, first.rows_replaced) == (3, 0, 0)
    assert existing_keys(fs, root, DAY) == {("s1", "1"), ("s2", "1")}

    second_rows = _table(
        _row("a", "s1", cls="scratch"),  # same key: the new row wins
        _row("a", "s1", version="2"),  # another model version: a separate row
        _row("bad", "s3"),  # the image that failed now reads: replaces its error row
        _row("c", "s4"),
    )
    second = write_partition(fs, root, DAY, second_rows)
    assert (second.rows_new, second.rows_kept, second.rows_replaced) == (4, 1, 2)
    expected = [
        ("a", "s1", "1", "scratch"),
        ("a", "s1", "2", "particle"),
        ("b", "s2", "1", "particle"),  # only in the first write: kept
        ("bad", "s3", "1", "particle"),
        ("c", "s4", "1", "particle"),
    ]
    assert _content(read_partition(fs, root, DAY)) == expected
    assert second.files == first.files  # one object, replaced in place: no stale file
    assert first.files[0].endswith("/date=2026-11-01/part-0.parquet")

    again = write_partition(fs, root, DAY, second_rows)  # the same run again: same rows
    assert (again.rows_new, again.rows_kept, again.rows_replaced) == (4, 1, 4)
    assert _content(read_partition(fs, root, DAY)) == expected
    assert len(again.files) == 1
    assert _content(read_partition(fs, root, NEXT_DAY)) == _content(_table(_row("n", "s9")))
    assert other_day.files == tuple(
        f for f in _all_parquet(bucket) if "date=2026-11-02" in f
    )  # the other partition was not touched


def test_partition_reads_back_as_a_hive_dataset(bucket: BucketCase) -> None:
    write_partition(bucket.fs, bucket.root, DAY, _table(_row("a", "s1")))
    write_partition(bucket.fs, bucket.root, NEXT_DAY, _table(_row("b", "s2")))
    table = read_partition(bucket.fs, bucket.root, DAY)
    assert table.schema.equals(PIPELINE_PREDICTION_SCHEMA, check_metadata=False)
    assert table.column("inferred_at").to_pylist() == [NOW]
    dataset = predictions_dataset(bucket.fs, bucket.root)
    everything = dataset.to_table(use_threads=False).sort_by("image_uri")
    assert everything.column("date").to_pylist() == [DAY, NEXT_DAY]
    assert dataset.to_table(filter=ds.field("date") == NEXT_DAY).num_rows == 1
    assert predictions_dataset(bucket.fs, f"{bucket.root}/nothing").count_rows() == 0


def test_partition_write_rejects_bad_tables(bucket: BucketCase) -> None:
    with pytest.raises(ValueError, match="repeat key"):
        write_partition(bucket.fs, bucket.root, DAY, _table(_row("a", "s1"), _row("copy", "s1")))
    model_only = _table(_row("a", "s1")).drop_columns([f.name for f in PIPELINE_FIELDS])
    with pytest.raises(ValueError, match="missing"):
        write_partition(bucket.fs, bucket.root, DAY, model_only)
    assert _all_parquet(bucket) == []
    empty = write_partition(bucket.fs, bucket.root, DAY, PIPELINE_PREDICTION_SCHEMA.empty_table())
    assert empty.rows_total == 0 and empty.files == ()


def _all_parquet(bucket: BucketCase) -> list[str]:
    bucket.fs.invalidate_cache()
    if not bucket.fs.exists(f"{bucket.root}/predictions"):
        return []
    found = bucket.fs.find(f"{bucket.root}/predictions")
    return sorted(bucket.fs.unstrip_protocol(p) for p in found if p.endswith(".parquet"))


def test_duckdb_summary_reads_the_dates_partitions(bucket: BucketCase) -> None:
    """DuckDB reads the partitions through the bucket's own filesystem (file:// and S3)."""
    from semclip.io.query import summarize_dates

    write_partition(
        bucket.fs,
        bucket.root,
        DAY,
        _table(_row("a", "s1"), _row("b", "s2", cls="scratch"), _row("c", "s3", version="2")),
    )
    write_partition(bucket.fs, bucket.root, NEXT_DAY, _table(_row("n", "s9")))
    summary = summarize_dates(bucket.fs, bucket.root, [DAY])
    assert summary.rows == 3
    assert summary.by_class == {"particle": 2, "scratch": 1}
    assert summary.by_lot_wafer == {"L1/?": {"particle": 2, "scratch": 1}}
    assert summary.model_versions == ["1", "2"]
    assert summarize_dates(bucket.fs, bucket.root, [DAY, NEXT_DAY]).rows == 4


def _at(row: dict[str, Any], minutes: int) -> dict[str, Any]:
    return {**row, "inferred_at": NOW + dt.timedelta(minutes=minutes)}


def _current(bucket: BucketCase, champion: tuple[str, str] | None) -> list[tuple[str, str, str]]:
    from semclip.io.query import connect

    con = connect(bucket.fs, bucket.root, champion=champion)
    return con.execute(
        "SELECT image_uri, image_sha256, model_version FROM predictions ORDER BY ALL"
    ).fetchall()


@pytest.mark.slow
def test_current_view_gives_one_row_per_image_after_a_champion_change(bucket: BucketCase) -> None:
    """v1 predicts a night, v2 is promoted, the night is re-run: 4 rows, 2 images."""
    from semclip.io.query import connect, summarize_dates

    write_partition(bucket.fs, bucket.root, DAY, _table(_at(_row("a", "s1"), 0), _row("b", "s2")))
    write_partition(
        bucket.fs,
        bucket.root,
        DAY,
        _table(_at(_row("a", "s1", "2"), 60), _at(_row("b", "s2", "2", cls="scratch"), 60)),
    )
    write_partition(bucket.fs, bucket.root, NEXT_DAY, _table(_row("a", "s1")))
    con = connect(bucket.fs, bucket.root)
    assert con.execute("SELECT count(*) FROM predictions_all").fetchone() == (5,)

    v2 = ("semclip-sem", "2")
    assert _current(bucket, v2) == [("a", "s1", "1"), ("a", "s1", "2"), ("b", "s2", "2")]
    rolled_back = _current(bucket, ("semclip-sem", "1"))  # the older champion's rows win again
    assert rolled_back == [("a", "s1", "1"), ("a", "s1", "1"), ("b", "s2", "1")]
    assert _current(bucket, None) == _current(bucket, v2)  # no champion: the newest row
    assert _current(bucket, ("other-model", "1")) == _current(bucket, v2)

    summary = summarize_dates(bucket.fs, bucket.root, [DAY], champion=v2)
    assert (summary.rows, summary.history_rows) == (2, 4)
    assert summary.by_class == {"particle": 1, "scratch": 1}
    assert summary.model_versions == ["2"]


def test_current_view_drops_rows_of_bytes_that_changed(bucket: BucketCase) -> None:
    """A URI re-written with new bytes: only the row for its latest bytes is current, even
    when the champion's row is for the old bytes."""
    write_partition(
        bucket.fs,
        bucket.root,
        DAY,
        _table(_at(_row("a", "old", "2"), 0), _at(_row("a", "new", "1"), 30)),
    )
    assert _current(bucket, ("semclip-sem", "2")) == [("a", "new", "1")]


def test_current_view_on_an_empty_bucket_has_the_declared_columns(bucket: BucketCase) -> None:
    from semclip.io.query import connect

    con = connect(bucket.fs, bucket.root)
    assert con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    columns = [c[0] for c in con.execute("DESCRIBE predictions").fetchall()]
    assert columns == [*PIPELINE_PREDICTION_SCHEMA.names, "date"]


def test_the_nightly_listing_says_what_it_left_alone(
    bucket: BucketCase, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """A night of files semclip does not read is said, not an empty night in silence."""
    from tasks.common import BucketRef
    from tasks.inference import list_images

    _put(bucket, "raw/2026-11-01/L9/W01/a.txt")
    _put(bucket, "raw/2026-11-01/L9/W01/D3.gif")
    _put(bucket, "raw/2026-11-01/L9/W01/.hidden.png")
    with caplog.at_level("WARNING"):
        assert list_images.fn(BucketRef(bucket.url, bucket.endpoint_url), DAY) == []
    text = caplog.text + capsys.readouterr().err  # Prefect's console handler, once set up
    assert "1 file(s) left alone, hidden file" in text and ".hidden.png" in text
    assert "not an image type semclip reads (.gif)" in text
    assert "not an image type semclip reads (.txt)" in text
