"""`make demo`'s Prefect server: started explicitly, waited for with the configured timeout."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest


@pytest.mark.slow  # starts a server process
def test_local_server_waits_with_the_configured_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait is the setting's (not Prefect's 20 s), and the URL is the process's API URL."""
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL

    from flows.local_server import local_server

    seen: dict[str, object] = {}

    def fake_start(self: prefect_server.SubprocessASGIServer, timeout: int | None = None) -> None:
        seen["timeout"] = timeout
        seen["port"] = self.port  # a port of its own, never a shared temporary server

    monkeypatch.setattr(prefect_server.SubprocessASGIServer, "start", fake_start)
    monkeypatch.setattr(prefect_server.SubprocessASGIServer, "stop", lambda self: None)
    monkeypatch.setenv("SEMCLIP_PREFECT_STARTUP_TIMEOUT_S", "240")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), local_server() as url:
        assert url == f"http://127.0.0.1:{seen['port']}/api"
        assert PREFECT_API_URL.value() == url
    assert seen["timeout"] == 240 and seen["port"] is not None


@pytest.mark.slow
def test_local_server_starts_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real server in a fresh PREFECT_HOME: healthy inside the block, stopped after it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.local_server import local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_HOME: str(tmp_path)}):
        with local_server() as url:
            assert url is not None
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/health", timeout=2)
