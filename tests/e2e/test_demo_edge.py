"""The demo's department edge names the certificate it asked for, not the first one its
endpoint happens to receive.

A real worker; the edge's own real processes (gateway, webhook sink) started by
``play_edge`` as in ``bus demo``. The Financial Office already has a certificate for
another enterprise in its inbox, so the webhook delivers that one first.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from rich.console import Console

from bus.dev.demo_edge import play_edge, start_gateway
from bus.dev.processes import WorkerProcess, terminate
from bus.dev.samples import enterprise, registered
from bus.settings import Settings
from tests.integration.test_correlate import folded, outputs, publish, request

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_the_edge_shows_the_certificate_of_the_enterprise_it_asked_about(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(91)
    earlier, fined, outboxed, asked = (enterprise(rng) for _ in range(4))
    console = Console(record=True, width=400)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(f, rng) for f in (earlier, fined, outboxed, asked)])
        folded(settings, "enterprise", 4)
        publish(settings, [request(earlier)])
        [first] = outputs(settings, "certificate", "certificate.issued", 1)
        gateway, url = start_gateway(settings, tmp_path / "edge.log")
        assert url is not None, (tmp_path / "edge.log").read_text()
        try:
            ok = asyncio.run(play_edge(console, settings, tmp_path, url, fined, outboxed, asked))
        finally:
            terminate(gateway, 15)
        issued = outputs(settings, "certificate", "certificate.issued", 2)
    text = console.export_text()
    [mine] = [c for c in issued if c.subject == asked.uscc]
    assert ok, text
    assert f"Financial Office asks for {asked.name}'s certificate" in text
    assert f"certificate {mine.payload.serial} (" in text
    assert first.payload.serial not in text
