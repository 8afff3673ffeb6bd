"""yield-report and klarf-export as real flow runs, and as the nightly's last steps.

The model is the tiny random-weight backbone (the champion of the template registry), so the
tests assert where the report goes, what it counts and that it carries the banner; never
prediction quality.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flows.nightly import nightly_inference
from flows.report import yield_report
from semclip.cli import main
from semclip.io.bucket import open_bucket
from semclip.io.klarf import parse_klarf
from semclip.io.partitions import read_partition

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            limit=1,
            sort="CREATED_DESC",
        )
    assert found, f"no artifact {key!r}"
    return str(found[0].data)


def test_nightly_ends_with_the_report_and_the_klarf_export(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = pipeline_env.fs, pipeline_env.root
    monkeypatch.setenv("SEMCLIP_NIGHTLY_REPORT", "true")  # the product's default
    monkeypatch.setenv("SEMCLIP_NIGHTLY_KLARF_EXPORT", "true")
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 6, corrupt=False)
    klarf = f"{root}/raw/{kit.RUN_DATE}/LOT7/W03/W03.klarf"
    original = fs.cat_file(klarf).decode()  # add a class column to export into
    with_class = original.replace(
        "5 DEFECTID XREL YREL XINDEX YINDEX", "6 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER"
    )
    with_class = (
        "DiePitch 100.0 200.0;\n"
        + "\n".join(
            f"{line} 99" if line.startswith(" ") and line.strip() else line
            for line in with_class.replace(";\nEndOfFile", "\n;\nEndOfFile").splitlines()
        )
        + "\n"
    )
    fs.pipe_file(klarf, with_class.encode())

    nightly = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert nightly.predicted == 6 and nightly.random_backbone
    rows = read_partition(fs, root, kit.RUN_DATE).to_pylist()
    assert {r["klarf_classnumber"] for r in rows} == {99}
    assert {r["die_pitch_y_um"] for r in rows} == {200.0}
    folder = f"{root}/reports/date={kit.RUN_DATE}"
    markdown = fs.cat_file(f"{folder}/report.md").decode()
    assert markdown.startswith(f"# Yield report {kit.RUN_DATE}")
    assert "RANDOM-WEIGHT BACKBONE" in markdown
    assert "current rows (one per image and date): 6" in markdown
    assert fs.exists(f"{folder}/wafer_LOT7_W03.png")
    artifact = _artifact_markdown("yield-report")
    assert "RANDOM-WEIGHT BACKBONE" in artifact and f"{folder}/report.md" in artifact
    # KLARF write-back: the predicted classes' codes, everything else as it was
    exported = fs.cat_file(f"{root}/klarf_out/{kit.RUN_DATE}/LOT7/W03/W03.klarf").decode()
    codes = {"good": 0, "bridge": 3, "particle": 1}  # the prompt file's class_codes
    by_defect = {int(r["defect_id"][1:]): codes[r["predicted_class"]] for r in rows}
    after, before = parse_klarf(exported), parse_klarf(with_class)
    assert {d.defect_id: d.classnumber for d in after.defects} == by_defect
    assert [d.x_rel_um for d in after.defects] == [d.x_rel_um for d in before.defects]


def test_yield_report_flow_on_s3_for_a_range(
    kit: Kit,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry_templates: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"s3://semclip-report-{uuid.uuid4().hex[:12]}"
    fs, root = open_bucket(url, endpoint_url=s3_endpoint, create=True)
    registry = kit.copy_registry(registry_templates, "champion", tmp_path / "registry")
    kit.use_environment(monkeypatch, tmp_path / "home", url, s3_endpoint, registry)
    monkeypatch.setenv("SEMCLIP_NIGHTLY_REPORT", "false")
    next_day = kit.RUN_DATE + dt.timedelta(days=1)
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 3, corrupt=False)
    kit.write_raw_dump(fs, root, next_day, 2, corrupt=False, seed=1)
    for day in (kit.RUN_DATE, next_day):
        nightly_inference(run_date=day.isoformat())
    assert not fs.exists(f"{root}/reports")  # SEMCLIP_NIGHTLY_REPORT=false

    result = yield_report(dates=f"{kit.RUN_DATE}..{next_day}", nights=2)

    dates = f"{kit.RUN_DATE}..{next_day}"
    label = f"{dates}_nights=2"  # not the standard 7-night trend: a report of its own
    assert result.rows == 5 and result.random_backbone
    assert result.uris[-1] == f"{url}/reports/date={label}/report.md"
    fs.invalidate_cache()
    assert fs.cat_file(f"{root}/reports/date={label}/report.md").decode() == result.markdown
    assert "| night | wafers |" in result.markdown  # the trend over both nights

    # the CLI gives the same Markdown, from the same bucket (S3 through its own filesystem)
    out = tmp_path / "copy"
    code = main(["report", "--dates", dates, "--nights", "2", "--copy-to", str(out)])
    assert code == 0
    assert (out / "report.md").read_text() == result.markdown
    assert "RANDOM-WEIGHT BACKBONE" in capsys.readouterr().out
    assert main(["report", "--dates", dates, "--lots", "NOPE"]) == 0
    printed = capsys.readouterr().out
    assert f"WARNING: no rows for lot NOPE in {dates}" in printed
    assert f"reports/date={dates}_lots=NOPE/report.md" in printed
    assert main(["report", "--date", "2026-13-01"]) == 2


def test_cli_klarf_export_names_missing_codes(
    kit: Kit,
    pipeline_env: PipelineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A KLARF without CLASSNUMBER is named and the command exits 1; --strict refuses codes."""
    fs, root = pipeline_env.fs, pipeline_env.root
    monkeypatch.setenv("SEMCLIP_NIGHTLY_REPORT", "false")
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 3, corrupt=False)
    nightly_inference(run_date=kit.RUN_DATE.isoformat())
    assert main(["klarf-export", "--date", str(kit.RUN_DATE)]) == 1
    assert "no CLASSNUMBER column" in capsys.readouterr().out
    monkeypatch.setenv("SEMCLIP_CLASS_CODES", '{"particle": "x"}')
    assert main(["klarf-export", "--date", str(kit.RUN_DATE)]) == 2
    assert "not an integer" in capsys.readouterr().err
