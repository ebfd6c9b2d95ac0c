"""The canary analysis is wired into a live server, with the feedback store's per-variant approval."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.model import tiny_settings
from tests.support.servers import LiveServer


def test_a_live_server_wires_its_feedback_stats_into_the_canary_analysis(tiny_model_dir: Path) -> None:
    with LiveServer(tiny_settings(tiny_model_dir)) as server:
        state = server.app.state.captioner
        assert state.canary is not None
        assert state.canary._feedback is state.feedback.stats
        assert state.feedback.stats.approval("canary") == (0, 0.0)
        assert httpx.get(server.url + "/api/v1/variants").json()["canary"] == {"state": "none"}
