"""The gateway's routes, one router per resource."""

from __future__ import annotations

from bus.edge.gateway.routes import cases, certificates, events, inbox, meta, reports, tasks

ROUTERS = [
    events.router,
    certificates.router,
    reports.router,
    inbox.router,
    tasks.router,
    cases.router,
    meta.router,
]

__all__ = ["ROUTERS"]
