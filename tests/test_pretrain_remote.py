"""Pretraining from an archive in the object store: a local folder and a real S3 endpoint (moto)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from semclip.io.bucket import BucketNotFoundError
from semclip.pretrain import PretrainConfig, pretrain
from semclip.pretrain.archive import load_archive
from semclip.pretrain.remote import is_remote, mirror_archive
from semclip.synth import generate_dataset

pytest_plugins = ["conftest_storage"]  # bucket fixtures on a local folder and on moto S3

COUNTS = {"good": 3, "bridge": 2, "particle": 2}


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic manifest folder (seed 91, used nowhere else)."""
    return generate_dataset(
        tmp_path_factory.mktemp("remote") / "archive", counts=COUNTS, seed=91, size=48
    )


def _upload(bucket, local: Path, prefix: str = "archives/sem") -> str:
    """Put every file of `local` under `prefix` in the bucket; returns the archive's URL."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{bucket.root}/{prefix}/{path.relative_to(local).as_posix()}"
        bucket.fs.pipe_file(target, path.read_bytes())
    return bucket.fs.unstrip_protocol(f"{bucket.root}/{prefix}")


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").rglob("*.png")}


def test_is_remote() -> None:
    assert is_remote("s3://bucket/prefix") and is_remote("file:///data/archive")
    assert not is_remote("/data/archive") and not is_remote("relative/folder")


def test_mirror_loads_as_the_same_archive(bucket, local_archive: Path, tmp_path: Path) -> None:
    url = _upload(bucket, local_archive)
    mirror = mirror_archive(url, tmp_path / "mirror", endpoint_url=bucket.endpoint_url)
    archive = load_archive(mirror)
    assert {item.sha256 for item in archive.items} == _hashes(local_archive)
    assert archive.counts() == {"good": 3, "bridge": 2, "particle": 2}
    assert archive.source["folder"] == url and archive.source["seed"] == 91
    assert archive.databar == load_archive(local_archive).databar  # synth.json came along
    assert all(item.mask is not None for item in archive.items if item.label != "good")


def test_mirror_fetches_only_what_changed(bucket, local_archive: Path, tmp_path: Path) -> None:
    url = _upload(bucket, local_archive)
    mirror = mirror_archive(url, tmp_path / "mirror", endpoint_url=bucket.endpoint_url)
    kept = mirror / "images" / "good" / "good_00000.png"
    lost = mirror / "images" / "bridge" / "bridge_00001.png"
    stamp = kept.stat().st_mtime_ns
    lost.unlink()
    mirror_archive(url, tmp_path / "mirror", endpoint_url=bucket.endpoint_url, progress=False)
    assert lost.read_bytes() == (local_archive / "images/bridge/bridge_00001.png").read_bytes()
    assert kept.stat().st_mtime_ns == stamp


def test_bad_rows_and_missing_files_are_all_named(
    bucket, local_archive: Path, tmp_path: Path
) -> None:
    url = _upload(bucket, local_archive)
    manifest = f"{bucket.root}/archives/sem/manifest.csv"
    text = bucket.fs.cat_file(manifest).decode()
    bucket.fs.pipe_file(manifest, (text + "../../etc/passwd,good,\n/abs.png,good,\n").encode())
    with pytest.raises(ValueError, match=r"2 path\(s\) outside its prefix.*\.\./\.\./etc/passwd"):
        mirror_archive(url, tmp_path / "m1", endpoint_url=bucket.endpoint_url)
    bucket.fs.pipe_file(manifest, (text + "images/good/gone.png,good,\n").encode())
    with pytest.raises(ValueError, match="1 file.*does not have: images/good/gone.png"):
        mirror_archive(url, tmp_path / "m2", endpoint_url=bucket.endpoint_url)
    assert not (tmp_path / "m2").exists(), "nothing is downloaded before the manifest checks out"


def test_a_prefix_without_manifest_is_named(bucket, tmp_path: Path) -> None:
    bucket.fs.makedirs(f"{bucket.root}/nothing-here", exist_ok=True)  # a folder for file://
    empty = bucket.fs.unstrip_protocol(f"{bucket.root}/nothing-here")
    with pytest.raises(FileNotFoundError, match="no manifest.csv at .*nothing-here"):
        mirror_archive(empty, tmp_path / "m", endpoint_url=bucket.endpoint_url)


def test_a_missing_bucket_is_named(missing_bucket, tmp_path: Path) -> None:
    url, endpoint = missing_bucket
    with pytest.raises(BucketNotFoundError, match="cannot read the archive .*does not exist"):
        mirror_archive(f"{url}/archive", tmp_path / "m", endpoint_url=endpoint)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_pretrain_from_s3_writes_seen_images_of_the_store(
    s3_endpoint: str, local_archive: Path, tmp_path: Path
) -> None:
    from semclip.io.bucket import open_bucket

    bucket = open_bucket("s3://semclip-pretrain-remote", endpoint_url=s3_endpoint, create=True)
    url = _upload(type("B", (), {"fs": bucket.fs, "root": bucket.root})(), local_archive)
    config = PretrainConfig(model="semclip-tiny", steps=2, batch_size=4, warmup_steps=1)
    config = replace(config, cpu_bf16=False, log_every=1, val_fraction=0.3)
    torch.set_num_threads(1)
    result = pretrain(
        config,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "bb",
        data=url,
        progress=False,
        endpoint_url=s3_endpoint,
    )
    assert result.finished
    seen = set((tmp_path / "bb" / "seen_images.txt").read_text().split())
    assert seen == _hashes(local_archive)
    card = (tmp_path / "bb" / "MODEL_CARD.md").read_text()
    assert url in card
    assert json.loads((tmp_path / "work" / "archive-mirror" / "mirror.json").read_text()) == {
        "url": url
    }


@pytest.mark.slow
def test_cli_pretrain_takes_an_archive_url(
    local_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from semclip.cli import main

    url = f"file://{local_archive}"
    argv = ["pretrain", "--data", url, "--model", "semclip-tiny", "--steps", "3"]
    argv += ["--batch-size", "4", "--stop-after", "1", "--cpu-bf16", "off"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "bb")]
    assert main(argv) == 0
    assert "stopped at step 1/3" in capsys.readouterr().out
    assert _hashes(tmp_path / "work" / "archive-mirror") == _hashes(local_archive)
