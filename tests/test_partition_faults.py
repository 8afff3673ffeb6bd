"""The prediction partition under faults: full disk, kill mid-write, old layouts, corrupt files.

Each case injects the fault (:mod:`faults`) into a real write on a local folder and on S3
(moto) and checks the promise: the partition holds the old rows or the new rows in full,
no row is lost or doubled, and a query of another date never breaks.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import textwrap
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import Fault, inject_faults, run_python

from semclip.io.partitions import (
    CORRUPT_DIR,
    PART_FILE,
    predictions_dataset,
    read_partition,
    write_partition,
)
from semclip.io.pipeline_schema import PIPELINE_PREDICTION_SCHEMA, pipeline_records_to_table
from semclip.io.query import CorruptPredictionFileError, summarize_dates
from semclip.io.staging import STAGING_DIR

if TYPE_CHECKING:
    from conftest_storage import BucketCase

pytest_plugins = ["conftest_storage"]

DAY = dt.date(2026, 11, 1)
OTHER_DAY = dt.date(2026, 11, 2)
NOW = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)
DAY_WRITES = "*predictions/date=2026-11-01/*"  # the staged copy now, the part file before


def _rows(prefix: str, n: int, version: str = "1") -> pa.Table:
    records: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {name: None for name in PIPELINE_PREDICTION_SCHEMA.names}
        row.update(image_uri=f"{prefix}-{i:03d}", image_sha256=f"sha-{prefix}-{i}")
        row.update(model_name="semclip-sem", model_version=version, predicted_class="particle")
        row.update(inferred_at=NOW, flow_run_id="run-1", lot_id="L1")
        records.append(row)
    return pipeline_records_to_table(records)


def _uris(table: pa.Table) -> list[str]:
    return sorted(table.column("image_uri").to_pylist())


def _files(bucket: BucketCase, folder: str) -> list[str]:
    bucket.fs.invalidate_cache()
    base = f"{bucket.root}/{folder}"
    if not bucket.fs.exists(base):
        return []
    return sorted(p[len(base) + 1 :] for p in bucket.fs.find(base))


def _legacy_file(bucket: BucketCase, day: dt.date, table: pa.Table) -> str:
    """A file as the old writer named it (``write_dataset``'s ``part-<uuid>-<i>``)."""
    path = f"{bucket.root}/predictions/date={day}/part-{uuid.uuid4().hex}-0.parquet"
    with bucket.fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return path


def test_full_disk_during_rewrite_keeps_the_old_rows(
    bucket: BucketCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = bucket.fs, bucket.root
    write_partition(fs, root, DAY, _rows("old", 40))
    write_partition(fs, root, OTHER_DAY, _rows("other", 3))
    (full,) = inject_faults(monkeypatch, fs, Fault.enospc(DAY_WRITES, after_bytes=512))

    with pytest.raises(OSError) as caught:
        write_partition(fs, root, DAY, _rows("new", 30))
    assert caught.value.errno == errno.ENOSPC and full.fired

    assert _uris(read_partition(fs, root, DAY)) == _uris(_rows("old", 40))  # 0 rows lost
    assert _files(bucket, f"predictions/date={DAY}") == [PART_FILE]  # no truncated file
    assert _files(bucket, STAGING_DIR) == []  # the failed write removed its staged copy
    assert summarize_dates(fs, root, [DAY, OTHER_DAY]).rows == 43  # queries still work

    again = write_partition(fs, root, DAY, _rows("new", 30))  # the disk has room again
    assert (again.rows_new, again.rows_kept) == (30, 40)
    assert _uris(read_partition(fs, root, DAY)) == sorted(
        _uris(_rows("old", 40)) + _uris(_rows("new", 30))
    )


@pytest.mark.slow  # kills a subprocess
def test_kill_during_rewrite_keeps_the_old_rows(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    write_partition(fs, root, DAY, _rows("old", 40))
    code = textwrap.dedent(
        f"""
        import datetime as dt, pytest
        from faults import Fault, inject_faults
        from semclip.io.bucket import open_bucket
        from semclip.io.partitions import write_partition
        from test_partition_faults import _rows
        fs, root = open_bucket({bucket.url!r}, endpoint_url={bucket.endpoint_url!r})
        inject_faults(pytest.MonkeyPatch(), fs, Fault.kill({DAY_WRITES!r}, after_bytes=300))
        write_partition(fs, root, dt.date.fromisoformat({DAY.isoformat()!r}), _rows("new", 30))
        print("write finished: the fault did not fire")
        """
    )
    killed = run_python(code)
    assert killed.returncode == -9, killed.stdout + killed.stderr

    assert _uris(read_partition(fs, root, DAY)) == _uris(_rows("old", 40))  # 0 rows lost
    assert _files(bucket, f"predictions/date={DAY}") == [PART_FILE]
    assert summarize_dates(fs, root, [DAY]).rows == 40
    orphans = _files(bucket, STAGING_DIR)
    assert len(orphans) == (1 if bucket.kind == "file" else 0)  # S3 got no byte of it

    # The next write sweeps orphans past the grace period (0 here: the orphan is seconds old).
    write_partition(fs, root, DAY, _rows("new", 30), orphan_grace=dt.timedelta(0))
    assert len(read_partition(fs, root, DAY)) == 70
    assert _files(bucket, STAGING_DIR) == []


def test_old_layout_is_read_then_replaced_by_one_fixed_object(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    _legacy_file(bucket, DAY, _rows("a", 5))
    _legacy_file(bucket, DAY, _rows("b", 4).drop_columns(["lot_id"]))  # before a column existed
    assert len(read_partition(fs, root, DAY)) == 9

    result = write_partition(fs, root, DAY, _rows("c", 2))
    assert result.files == (fs.unstrip_protocol(f"{root}/predictions/date={DAY}/{PART_FILE}"),)
    assert (result.rows_new, result.rows_kept, result.rows_replaced) == (2, 9, 0)
    table = read_partition(fs, root, DAY)
    expected = _uris(_rows("a", 5)) + _uris(_rows("b", 4)) + _uris(_rows("c", 2))
    assert _uris(table) == sorted(expected)
    assert table.column("lot_id").null_count == 4


def test_leftover_beside_part_0_is_never_counted_twice(bucket: BucketCase) -> None:
    """A crash between the swap and deleting the old files: part-0.parquet alone counts."""
    fs, root = bucket.fs, bucket.root
    _legacy_file(bucket, DAY, _rows("a", 5))
    write_partition(fs, root, DAY, _rows("b", 2))
    _legacy_file(bucket, DAY, _rows("a", 5))  # as if its deletion had not happened
    assert len(read_partition(fs, root, DAY)) == 7
    assert predictions_dataset(fs, root).count_rows() == 7
    assert summarize_dates(fs, root, [DAY]).rows == 7
    write_partition(fs, root, DAY, _rows("c", 1))
    assert _files(bucket, f"predictions/date={DAY}") == [PART_FILE]
    assert len(read_partition(fs, root, DAY)) == 8


@pytest.mark.slow
def test_corrupt_file_is_quarantined_and_other_dates_still_query(
    bucket: BucketCase, caplog: pytest.LogCaptureFixture
) -> None:
    fs, root = bucket.fs, bucket.root
    write_partition(fs, root, OTHER_DAY, _rows("other", 3))
    _legacy_file(bucket, DAY, _rows("a", 5))
    good = pq.write_table  # a truncated copy of a valid file, as a full disk left it
    broken = f"{root}/predictions/date={DAY}/part-{uuid.uuid4().hex}-0.parquet"
    with fs.open(broken, "wb") as f:
        good(_rows("lost", 30), f)
    fs.pipe_file(broken, fs.cat_file(broken)[:300])
    broken_uri = fs.unstrip_protocol(broken)

    assert summarize_dates(fs, root, [OTHER_DAY]).rows == 3  # another date: unaffected
    with pytest.raises(CorruptPredictionFileError, match=broken_uri.replace(".", r"\.")):
        summarize_dates(fs, root, [DAY])
    with caplog.at_level(logging.ERROR, logger="semclip.io.partitions"):
        assert len(read_partition(fs, root, DAY)) == 5  # the readable rows; it is skipped
    assert broken_uri in caplog.text

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="semclip.io.partitions"):
        write_partition(fs, root, DAY, _rows("lost", 30))  # the run predicts them again
    moved = _files(bucket, f"{CORRUPT_DIR}/date={DAY}")
    assert len(moved) == 1 and moved[0].endswith(broken.rsplit("/", 1)[-1])
    assert broken_uri in caplog.text and f"{CORRUPT_DIR}/date={DAY}/" in caplog.text
    assert _files(bucket, f"predictions/date={DAY}") == [PART_FILE]
    assert summarize_dates(fs, root, [DAY, OTHER_DAY]).rows == 38


def _rot_first_page(bucket: BucketCase, path: str) -> None:
    """Bit rot inside the first data page's header; the footer stays valid, so the file
    opens and only reading its rows fails (pyarrow: ``OSError: Couldn't deserialize
    thrift``, which looked like a transient I/O error)."""
    data = bytearray(bucket.fs.cat_file(path))
    data[4:28] = b"\xff" * 24  # just after the leading PAR1 magic
    bucket.fs.pipe_file(path, bytes(data))
    pq.read_metadata(pa.BufferReader(bytes(data)))  # the footer alone still reads


def test_bit_rot_in_a_data_page_is_corrupt_not_transient(
    bucket: BucketCase, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the reader raised that OSError, the task retried it as I/O and failed every
    night: the date's partition could never be rewritten."""
    fs, root = bucket.fs, bucket.root
    write_partition(fs, root, DAY, _rows("rotten", 20))
    part = f"{root}/predictions/date={DAY}/{PART_FILE}"
    _rot_first_page(bucket, part)
    uri = fs.unstrip_protocol(part).replace(".", r"\.")
    with pytest.raises(CorruptPredictionFileError, match=uri):  # not DuckDB's nameless error
        summarize_dates(fs, root, [DAY])

    with caplog.at_level(logging.ERROR, logger="semclip.io.partitions"):
        assert len(read_partition(fs, root, DAY)) == 0  # skipped, named, not raised
    assert fs.unstrip_protocol(part) in caplog.text and "not readable Parquet" in caplog.text

    write_partition(fs, root, DAY, _rows("rotten", 20))  # the run predicts them again
    assert len(_files(bucket, f"{CORRUPT_DIR}/date={DAY}")) == 1  # bytes kept for a post-mortem
    assert _uris(read_partition(fs, root, DAY)) == _uris(_rows("rotten", 20))


def test_a_failed_fetch_of_a_partition_stays_a_retried_io_error(
    bucket: BucketCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the line: a network error while fetching the bytes is no
    corruption; it propagates as the OSError it is (retried), and nothing is moved."""
    fs, root = bucket.fs, bucket.root
    write_partition(fs, root, DAY, _rows("fine", 5))
    real_open = type(fs).open

    def flaky_open(self: Any, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode and path.endswith(PART_FILE):
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(type(fs), "open", flaky_open)
    with pytest.raises(ConnectionResetError):
        read_partition(fs, root, DAY)
    monkeypatch.undo()
    assert _files(bucket, f"{CORRUPT_DIR}/date={DAY}") == []
    assert len(read_partition(fs, root, DAY)) == 5


def test_a_long_run_of_another_date_keeps_its_staged_shards(bucket: BucketCase) -> None:
    """Before: any partition write swept every staged file past 6 h, so a night that ran
    longer (100k images on one machine) lost its shards to another date's write and failed
    at its merge after hours of compute."""
    from semclip.io.staging import staging_path

    fs, root = bucket.fs, bucket.root
    now = dt.datetime.now(dt.UTC)

    def staged(day: dt.date, age: dt.timedelta) -> str:
        path = staging_path(root, "nightly", day, "run-shard-00000.parquet", now=now - age)
        fs.pipe_file(path, b"rows")
        return path

    live_elsewhere = staged(OTHER_DAY, dt.timedelta(hours=8))  # a long run of another date
    stale_elsewhere = staged(OTHER_DAY, dt.timedelta(days=8))  # no run lives for a week
    orphan_here = staged(DAY, dt.timedelta(hours=8))  # DAY's lock: no other writer of DAY

    write_partition(fs, root, DAY, _rows("a", 3))

    fs.invalidate_cache()
    assert fs.exists(live_elsewhere)
    assert not fs.exists(stale_elsewhere) and not fs.exists(orphan_here)
