"""Async jobs end to end through real HTTP with the tiny model: 202 then the sync call's body, errors, API keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.jobs import job_result, submit_job
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir)) as live:
        yield live


def test_async_job_returns_202_then_the_same_body_as_a_sync_call(server: LiveServer) -> None:
    data = photo(501)
    accepted = submit_job(server, data)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "processing"
    assert len(body["job_id"]) == 32
    assert isinstance(body["estimated_time_seconds"], float) and body["estimated_time_seconds"] > 0
    assert accepted.headers["location"] == f"{CAPTION}/{body['job_id']}"
    done = job_result(server, body["job_id"])
    assert done.status_code == 200
    result = done.json()
    assert result["status"] == "success" and result["job_id"] == body["job_id"]
    assert result["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert result["cached"] is False
    sync = httpx.post(server.url + CAPTION, content=data, headers={"Content-Type": "image/png"}, timeout=30).json()
    assert sync["cached"] is True  # the job's captions went into the cache
    assert {k: v for k, v in result.items() if k not in ("job_id", "cached")} == {
        k: v for k, v in sync.items() if k != "cached"
    }
    assert server.metric("captioner_jobs_total", 'status="success"') >= 1


def test_a_bad_image_fails_the_job_with_the_usual_error_body(server: LiveServer) -> None:
    accepted = submit_job(server, b"\x89PNG\r\n\x1a\n not really a png")
    assert accepted.status_code == 202
    done = job_result(server, accepted.json()["job_id"])
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "error" and body["error"]["code"] == "invalid_image"
    assert body["error"]["message"]


def test_a_malformed_request_is_refused_at_once_not_as_a_job(server: LiveServer) -> None:
    response = httpx.post(
        server.url + CAPTION + "?mode=async&num_captions=99", content=photo(1), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    unsupported = httpx.post(server.url + CAPTION + "?mode=async", content=b"x", headers={"Content-Type": "text/plain"})
    assert unsupported.status_code == 415
    bad_mode = httpx.post(server.url + CAPTION + "?mode=later", content=photo(1), headers={"Content-Type": "image/png"})
    assert bad_mode.status_code == 422 and "mode" in bad_mode.json()["error"]["message"]
    for host in ("a..b.example", "a" * 64 + ".example", ""):  # no callback could ever reach these hosts
        bad_host = httpx.post(
            server.url + CAPTION + "?mode=async", params={"callback_url": f"http://{host}/cb"}, content=photo(1),
            headers={"Content-Type": "image/png"},
        )  # fmt: skip
        assert (bad_host.status_code, bad_host.json()["error"]["code"]) == (422, "invalid_request"), host


def test_unknown_job_is_a_404_json_error(server: LiveServer) -> None:
    for job_id in ("0" * 32, "not-a-job-id"):
        response = httpx.get(f"{server.url}{CAPTION}/{job_id}")
        assert response.status_code == 404
        assert response.json()["status"] == "error" and response.json()["error"]["code"] == "not_found"


def test_jobs_follow_the_api_key_rules(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, auth={"api_keys": ["alpha-key", "beta-key"]})
    alpha = {"Authorization": "Bearer alpha-key"}
    beta = {"Authorization": "Bearer beta-key"}
    with LiveServer(settings) as live:
        assert submit_job(live, photo(7)).status_code == 401
        accepted = submit_job(live, photo(7), headers=alpha)
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        url = f"{live.url}{CAPTION}/{job_id}"
        assert httpx.get(url).status_code == 401
        assert job_result(live, job_id, alpha).json()["status"] == "success"
        other = httpx.get(url, headers=beta)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
