"""Shard scaling of the nightly flow on Dask: the same date predicted with 1, 2, … workers.

    python benchmarks/bench_shards.py --images 2000 --workers 1,2     (or: make bench-shards)

Builds a throw-away world in a temp folder: a tiny-config model (RANDOM-WEIGHT BACKBONE: the
figures are throughput, never quality) registered as champion in a SQLite MLflow registry,
``--images`` synthetic 64 px SEM images under ``raw/<date>/`` of a local bucket, and a local
Prefect server. Then, per worker count, it deletes the date's partition and runs the real
``nightly-inference`` flow with ``SEMCLIP_TASK_RUNNER=dask SEMCLIP_DASK_WORKERS=<n>`` (``seq``
in ``--workers``: the sequential path), and prints img/s of the shard stage (the run's
``predict_s``: model loads included, cluster start-up left out), the flow's wall time, and
each rate over the first one's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = dt.date(2026, 11, 1)
LABELS = ("good", "bridge", "particle")
SIZE = 64  # the tiny backbone's input size


def _png(array: object) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def _register_model(home: Path) -> None:
    """A tiny model (one shot per class, 5 steps) as version 1 = champion."""
    from semclip import FitConfig, SemclipModel, load_backbone, save_model
    from semclip.model import SupportItem
    from semclip.registry.client import Registry
    from semclip.registry.refs import CHAMPION
    from semclip.settings import get_settings
    from semclip.synth import render_sample, sample_rng

    items = []
    for label in LABELS:
        sample = render_sample(label, sample_rng(7, label, 0), size=SIZE)
        items.append(SupportItem(image=_png(sample.image), label=label, mask=sample.mask))
    fit = {"augment": False, "min_steps": 5, "max_steps": 5, "cv_folds": 2}
    model = SemclipModel.fit(
        load_backbone("semclip-tiny", None, "cpu"), items, config=FitConfig.from_dict(fit)
    )
    registry = Registry.from_settings(get_settings())
    ref = registry.log_version(save_model(model, home / "fitted"), run_name="bench-shards")
    registry.set_alias(CHAMPION, ref.version)


def _write_images(bucket: Path, n: int) -> None:
    from semclip.synth import render_sample, sample_rng

    folder = bucket / "raw" / RUN_DATE.isoformat() / "LOT1" / "W01"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = LABELS[i % 3]
        image = render_sample(label, sample_rng(0, label, i), size=SIZE).image
        (folder / f"D{i + 1:05d}.png").write_bytes(_png(image))


def _run(workers: str, bucket: Path) -> dict[str, object]:
    """One nightly run of the date, predicted from nothing."""
    import shutil

    from flows.nightly import nightly_inference

    shutil.rmtree(bucket / "predictions", ignore_errors=True)
    if workers == "seq":
        os.environ["SEMCLIP_TASK_RUNNER"] = "sequential"
        os.environ.pop("SEMCLIP_DASK_WORKERS", None)
    else:
        os.environ["SEMCLIP_TASK_RUNNER"] = "dask"
        os.environ["SEMCLIP_DASK_WORKERS"] = workers
    started = time.monotonic()
    report = nightly_inference(run_date=RUN_DATE.isoformat())
    wall = time.monotonic() - started
    assert report.predicted == report.images, report
    return {
        "runner": report.shard_runner,
        "workers": len(report.workers),
        "images": report.predicted,
        "predict_s": report.predict_s,
        "img_s": report.predicted / report.predict_s,
        "flow_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", default="1,2", help="comma list of counts, or seq")
    parser.add_argument("--batch-size", type=int, default=32, help="images per shard")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="semclip-bench-shards-"))
    os.environ.update(
        {
            "SEMCLIP_HOME": str(home),
            "SEMCLIP_BUCKET": str(home / "bucket"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "SEMCLIP_BATCH_SIZE": str(args.batch_size),
            "SEMCLIP_TIMEZONE": "UTC",
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    sys.path.insert(0, str(REPO))
    from flows.local_server import local_server
    from flows.setup import ensure_gpu_limit

    _register_model(home)
    _write_images(home / "bucket", args.images)
    results = []
    with local_server():
        ensure_gpu_limit()
        for workers in args.workers.split(","):
            results.append(_run(workers.strip(), home / "bucket"))
    print(f"\nRANDOM-WEIGHT BACKBONE (semclip-tiny): throughput only. {os.cpu_count()} CPU cores")
    print("| shards on | workers used | images | predict s | img/s | flow s | × first |")
    print("|---|---|---|---|---|---|---|")
    base = float(results[0]["img_s"])  # type: ignore[arg-type]
    for r in results:
        print(
            f"| {r['runner']} | {r['workers']} | {r['images']} | {r['predict_s']:.1f} "
            f"| {r['img_s']:.1f} | {r['flow_s']:.1f} | {float(r['img_s']) / base:.2f} |"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
