"""Settings: defaults, sources and their precedence, validation, and the README table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from semclip.settings import DEFAULT_PATH_REGEX, SemclipSettings, get_settings, settings_table

_FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SEMCLIP_/MLflow/S3 variable of the machine leaks in; run from an empty folder."""
    for name in list(os.environ):
        if name.startswith("SEMCLIP_") or name in _FOREIGN_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_resolve_under_home(clean_env: Path) -> None:
    s = get_settings()
    home = (clean_env / ".semclip").resolve()
    assert s.home == home
    assert s.bucket == f"file://{home}/bucket"
    assert s.mlflow_tracking_uri == f"sqlite:///{home}/mlflow.db"
    assert s.prefect_home == home / "prefect"
    assert s.model_name == "semclip-sem"
    assert s.timezone == "UTC"
    assert s.path_regex == DEFAULT_PATH_REGEX
    assert (s.tiff_page, s.batch_size, s.support_cap_per_class) == (0, 32, 20)
    assert (s.holdout_fraction, s.gate_min_f1_gain, s.gate_max_pixel_f1_drop) == (0.2, 0.01, 0.02)
    assert s.s3_endpoint_url is None and s.backbone is None and s.pretrained is None


def test_environment_is_read_when_called_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCLIP_HOME", "/srv/semclip")
    monkeypatch.setenv("SEMCLIP_MODEL_NAME", "fab7")
    monkeypatch.setenv("SEMCLIP_BATCH_SIZE", "8")
    monkeypatch.setenv("SEMCLIP_TIMEZONE", "Asia/Taipei")
    s = get_settings()
    assert s.home == Path("/srv/semclip")
    assert s.bucket == "file:///srv/semclip/bucket"
    assert s.prefect_home == Path("/srv/semclip/prefect")
    assert (s.model_name, s.batch_size, s.timezone) == ("fab7", 8, "Asia/Taipei")


def test_standard_variables_of_mlflow_and_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCLIP_MLFLOW_TRACKING_URI", "http://semclip-only:5000")
    assert get_settings().mlflow_tracking_uri == "http://semclip-only:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio:9000")
    s = get_settings()
    assert s.mlflow_tracking_uri == "http://mlflow:5000"  # the standard variable wins
    assert s.s3_endpoint_url == "http://minio:9000"


def test_bucket_urls_are_normalised(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    assert get_settings(bucket="data/b").bucket == f"file://{clean_env.resolve()}/data/b"
    assert get_settings(bucket="file://rel/b/").bucket == f"file://{clean_env.resolve()}/rel/b"
    assert get_settings(bucket="s3://fab-sem/night/").bucket == "s3://fab-sem/night"
    with pytest.raises(ValidationError, match="names no bucket"):
        get_settings(bucket="s3:///nothing")


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_config_file_sits_below_env_and_overrides(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path, suffix: str
) -> None:
    config = clean_env / f"semclip{suffix}"
    if suffix == ".toml":
        config.write_text('model_name = "from-file"\nbatch_size = 4\ntimezone = "Europe/Berlin"\n')
    else:
        config.write_text("model_name: from-file\nbatch_size: 4\ntimezone: Europe/Berlin\n")
    monkeypatch.setenv("SEMCLIP_CONFIG", str(config))
    monkeypatch.setenv("SEMCLIP_BATCH_SIZE", "16")
    s = get_settings(timezone="UTC")
    assert s.model_name == "from-file"  # file beats default
    assert s.batch_size == 16  # env beats file
    assert s.timezone == "UTC"  # override beats everything


def test_config_file_argument_beats_env_variable(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / "a.toml").write_text('model_name = "a"\n')
    (clean_env / "b.toml").write_text('model_name = "b"\n')
    monkeypatch.setenv("SEMCLIP_CONFIG", str(clean_env / "a.toml"))
    assert get_settings(config_file=clean_env / "b.toml").model_name == "b"
    assert get_settings().model_name == "a"


def test_config_file_problems_are_loud(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setenv("SEMCLIP_CONFIG", str(clean_env / "missing.toml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.toml.*SEMCLIP_CONFIG"):
        get_settings()
    typo = clean_env / "typo.toml"
    typo.write_text("batchsize = 4\n")
    with pytest.raises(ValidationError, match="batchsize"):
        get_settings(config_file=typo)
    ini = clean_env / "semclip.ini"
    ini.write_text("[x]\n")
    with pytest.raises(ValueError, match=r"\.toml, \.yaml"):
        get_settings(config_file=ini)


def test_unrelated_semclip_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCLIP_SOMETHING_ELSE", "x")
    assert get_settings().model_name == "semclip-sem"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("path_regex", r"(?P<lot>[^/]+)", "named group"),
        ("path_regex", r"(?P<lot_id>[", "not a valid regular expression"),
        ("holdout_fraction", 1.0, "less than 1"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("tiff_page", -1, "greater than or equal to 0"),
        ("gate_max_pixel_f1_drop", -0.1, "greater than or equal to 0"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        get_settings(**{field: value})
    assert field in str(info.value)


def test_settings_are_frozen() -> None:
    s = get_settings()
    with pytest.raises(ValidationError):
        s.batch_size = 3


def test_table_lists_every_setting_with_env_default_and_description() -> None:
    rows = {name: (env, default, desc) for name, env, default, desc in settings_table()}
    assert set(rows) == {"config", *SemclipSettings.model_fields}
    assert all(desc for _, _, desc in rows.values())
    assert rows["config"][0] == "SEMCLIP_CONFIG"
    assert rows["bucket"][:2] == ("SEMCLIP_BUCKET", "file://$SEMCLIP_HOME/bucket")
    assert rows["mlflow_tracking_uri"][:2] == (
        "MLFLOW_TRACKING_URI",
        "sqlite:///$SEMCLIP_HOME/mlflow.db",
    )
    assert rows["s3_endpoint_url"][:2] == ("AWS_ENDPOINT_URL_S3", "unset")
    assert rows["batch_size"][:2] == ("SEMCLIP_BATCH_SIZE", "32")
    assert rows["home"][1] == "./.semclip"


@pytest.mark.slow
def test_library_modules_import_neither_prefect_nor_mlflow() -> None:
    code = (
        "import sys, semclip.settings, semclip.io.bucket, semclip.io.paths, semclip.io.klarf, "
        "semclip.io.klarf_join, semclip.io.confirmed, semclip.io.quarantine, "
        "semclip.io.partitions, semclip.io.fetch, semclip.io.pipeline_schema, "
        "semclip.registry.refs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_lists_every_setting_with_its_variable_and_default() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, env, default, _ in settings_table():
        assert f"| `{name}` | `{env}` | `{default}` |" in readme, name


def test_max_image_pixels_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from semclip.data.images import DEFAULT_MAX_PIXELS

    assert get_settings().max_image_pixels == DEFAULT_MAX_PIXELS == 2**28
    monkeypatch.setenv("SEMCLIP_MAX_IMAGE_PIXELS", "1000000")
    assert get_settings().max_image_pixels == 1_000_000
    monkeypatch.setenv("SEMCLIP_MAX_IMAGE_PIXELS", "0")
    with pytest.raises(ValidationError, match="max_image_pixels"):
        get_settings()


def test_a_bad_setting_is_named_as_the_user_set_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The CLI names the environment variable and the config key, not pydantic's field text,
    and refuses before any model loads (the model named here does not exist)."""
    from semclip.cli import main

    monkeypatch.setenv("SEMCLIP_PIXEL_SIZE_NM", "-5")
    assert main(["predict", "--model", "no-such-model", "--out", "p.parquet", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "bad setting: SEMCLIP_PIXEL_SIZE_NM='-5' (config key 'pixel_size_nm')" in err
    assert "greater than 0" in err and "no-such-model" not in err


@pytest.mark.parametrize(
    ("suffix", "text"), [(".toml", "not = toml = at all\n"), (".yaml", "a: [b\n")]
)
def test_a_config_file_that_does_not_parse_is_named(
    suffix: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / f"broken{suffix}"
    broken.write_text(text)
    monkeypatch.setenv("SEMCLIP_CONFIG", str(broken))
    with pytest.raises(
        ValueError, match=f"config file '{broken}' \\(from SEMCLIP_CONFIG\\) cannot be parsed"
    ):
        get_settings()
