"""The loop through real Prefect runs: imported review decisions reach the next refit; the
nightly writes its drift summary and emits the drift event; the automations parse and are
created on the Prefect test server."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from prefect.events.schemas.automations import AutomationCore, Posture

from flows.automations import (
    AUTOMATIONS_DIR,
    PLACEHOLDER_BLOCK,
    install_automations,
    late_within,
    load_automations,
    nightly_cron_time,
)
from semclip.drift.summary import read_summary
from semclip.io.bucket import open_bucket
from semclip.review.importer import import_review
from tasks.drift import DRIFT_EVENT

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def test_imported_decisions_reach_the_next_refit(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_templates: Any
) -> None:
    from flows.refit import refit

    url = f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, create=True)
    registry = kit.copy_registry(registry_templates, "empty", tmp_path / "registry")
    kit.use_environment(monkeypatch, tmp_path / "home", url, None, registry)
    kit.write_confirmed(fs, root, {"good": 2, "bridge": 2})
    # two night images the engineers labelled "particle" (a class nobody confirmed before),
    # one with a corrected mask drawn on their own disk
    rows = []
    for i in range(2):
        image = f"raw/{kit.RUN_DATE}/LOT7/W03/D{i:04d}.png"
        fs.pipe_file(f"{root}/{image}", kit.synth_png("particle", 40 + i))
        rows.append({"image": image, "label": "Particle", "mask": None})
    mask = np.zeros((kit.IMAGE_SIZE, kit.IMAGE_SIZE), dtype=np.uint8)
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "D0000-fixed.png")
    rows[0]["mask"] = "D0000-fixed.png"
    decisions = tmp_path / "decisions.csv"
    pd.DataFrame(rows).to_csv(decisions, index=False)
    result = import_review(fs, root, str(decisions), reviewer="ana")
    assert result.imported == 2 and result.masks == 1 and not result.rejected

    report = refit(backbone="semclip-tiny", fit=kit.FAST_FIT, databar_bottom=5)

    assert report.n_confirmed == 6
    model = registry.load(registry.resolve(report.version))
    support = {Path(s["uri"]).name: s for s in model.lineage["support"]}
    assert "particle" in model.classes  # only the imported rows have it
    imported = [support[n] for n in ("D0000.png", "D0001.png") if n in support]
    assert imported and all(s["label"] == "particle" for s in imported)
    if "D0000.png" in support:  # the corrected mask was trained on
        assert support["D0000.png"]["mask"] == "array"


def _events(name: str, wait_s: float = 30.0, until: Any = None) -> list[Any]:
    """Events named ``name``; waits (events reach the server asynchronously) until one
    satisfies ``until`` (default: any event at all)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50)
        found = [e for e in page.events if until is None or until(e)]
        if found or time.monotonic() > deadline:
            return page.events
        time.sleep(0.5)


def test_nightly_writes_the_drift_summary_and_flags_a_drifted_night(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.nightly import nightly_inference

    env = pipeline_env
    monkeypatch.setenv("SEMCLIP_DRIFT_THRESHOLD", "0.000001")  # any change at all is drift
    first_day = kit.RUN_DATE
    kit.write_raw_dump(env.fs, env.root, first_day, 6, corrupt=False)
    first = nightly_inference(run_date=first_day.isoformat())
    assert first.drift is not None and first.drift.error is None
    assert first.drift.score is None and not first.drift.flagged  # no reference yet
    summary = read_summary(env.fs, env.root, first_day)
    assert summary is not None and summary.n_images == 6 and summary.n_embedded == 6
    assert summary.cls_embedding is not None

    second_day = first_day + dt.timedelta(days=1)
    kit.write_raw_dump(env.fs, env.root, second_day, 6, corrupt=False, seed=5)
    second = nightly_inference(run_date=second_day.isoformat())

    assert second.drift is not None and second.drift.flagged, second.drift
    assert second.drift.score is not None and second.drift.score > 0
    assert "DRIFT FLAGGED" in second.markdown()
    events = _events(DRIFT_EVENT)
    assert any(e.resource.id == f"semclip.drift.{second_day}" for e in events)

    # The session's server also holds other tests' events of this date: find this run's.
    def is_ours(e: Any) -> bool:
        return e.resource.id == f"semclip.drift.{second_day}" and e.payload[
            "score"
        ] == pytest.approx(second.drift.score)

    events = _events(DRIFT_EVENT, until=is_ours)
    ours = [e for e in events if is_ours(e)]
    assert ours, [(e.resource.id, e.payload) for e in events]
    assert ours[0].payload["reference_dates"] == [first_day.isoformat()]


def test_shipped_automations_are_valid_prefect_automations() -> None:
    files = sorted(AUTOMATIONS_DIR.glob("*.yaml"))
    assert [f.stem for f in files] == ["drift-flagged", "nightly-failed", "nightly-late"]
    parsed = {f.stem: AutomationCore.model_validate(yaml.safe_load(f.read_text())) for f in files}
    failed, late, drift = parsed["nightly-failed"], parsed["nightly-late"], parsed["drift-flagged"]
    assert failed.trigger.posture == Posture.Reactive
    assert "prefect.flow-run.Failed" in failed.trigger.expect
    assert late.trigger.posture == Posture.Proactive
    assert late.trigger.expect == {"prefect.flow-run.Completed"}
    assert drift.trigger.expect == {DRIFT_EVENT}
    # 02:30 nightly (prefect.yaml) + within = the 07:00 deadline the file documents
    assert nightly_cron_time() == dt.time(2, 30)
    assert late.trigger.within == late_within(dt.time(7, 0), dt.time(2, 30))
    assert all(a.block_document_id == PLACEHOLDER_BLOCK for p in parsed.values() for a in p.actions)
    moved = {a.name: a for a in load_automations(deadline=dt.time(8, 15))}
    assert moved["semclip-nightly-late"].trigger.within == dt.timedelta(hours=5, minutes=45)


def test_automations_are_created_on_the_prefect_server() -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    block = CustomWebhookNotificationBlock(name="fab", url="http://127.0.0.1:9/alerts")
    block.save("semclip-test-alerts", overwrite=True)
    first = install_automations("custom-webhook/semclip-test-alerts")
    again = install_automations("custom-webhook/semclip-test-alerts", dt.time(6, 0))
    assert len(first) == len(again) == 3
    with get_client(sync_client=True) as client:
        for name in ("semclip-nightly-failed", "semclip-nightly-late", "semclip-drift-flagged"):
            found = client.read_automations_by_name(name)
            assert len(found) == 1, name  # replaced, not duplicated
            assert found[0].actions[0].block_document_id == block._block_document_id
        late = client.read_automations_by_name("semclip-nightly-late")[0]
        assert late.trigger.within == dt.timedelta(hours=3, minutes=30)
