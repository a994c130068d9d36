"""The live gateway's own OpenAPI, fuzzed: no request to any route is answered with a 5xx,
and every 4xx has the documented error body.

A real ``bus gateway run`` on the session's broker; schemathesis generates requests from
``/openapi.json`` (valid and invalid ones) and sends them with a valid key. Derandomised, a
bounded number per route (fewer where a request reads a topic and takes about a second), no
shrinking: the first 5xx fails the test with its request. Requests by status class are
counted in the terminal summary's ``fuzz`` section; the gateway's log must hold no traceback.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bus.domain.certificates import Signer
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

EXAMPLES = 50
"""Requests per route and generation mode (valid, invalid)."""

SLOW = {"/v1/certificates/{serial}": 5, "/v1/cases/{correlation_id}": 5, "/healthz": 3}
"""Routes that read a topic or ask the broker on every request: fewer requests."""


def test_no_request_gets_a_5xx(gateway: Gateway, tmp_path: Path, fuzz_counts: Counter[str]) -> None:
    keys = gateway.settings.data_dir / "keys"  # what a worker publishes: verify needs it
    keys.mkdir(parents=True, exist_ok=True)
    Signer.generate("ks-bus-1").save_public_key(keys / "ks-bus-1.pub")
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    auth = gateway.key("ks.enforcement.huaqiao")
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = SLOW.get(operation.path, EXAMPLES)
        route = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases = operation.as_strategy(generation_mode=mode, headers=dict(auth))

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def send(case: schemathesis.Case) -> None:
                if isinstance(case.query, dict) and "wait" in case.query:
                    case.query["wait"] = 0  # long polling: a valid wait of 30 s is not a fault
                response = case.call(base_url=gateway.url, timeout=60)
                status = f"{response.status_code // 100}xx"
                statuses[status] += 1
                fuzz_counts[f"{route} -> {status}"] += 1  # noqa: B023 (send runs in this loop)
                what = f"{case.method} {case.formatted_path} -> {response.status_code}"
                assert response.status_code < 500, f"{what}: {response.text[:500]}"
                if response.status_code >= 400:  # the documented body, never {"detail": ...}
                    assert {"error", "field", "message"} <= response.json().keys(), what

            try:
                send()
            except Unsatisfiable:  # e.g. a path parameter that is any string: nothing invalid
                assert mode is GenerationMode.NEGATIVE, route
                print(f"{route}: no invalid request to make")
    print(f"{statuses.total()} requests in {time.monotonic() - started:.0f} s: {dict(statuses)}")
    assert statuses["2xx"] > 0, "with a valid key some requests must succeed"
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
