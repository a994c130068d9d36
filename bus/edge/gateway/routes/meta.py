"""About the gateway itself: the AsyncAPI document, metrics, health."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from bus.edge.gateway.common import State, worker_alive
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import ErrorBody, Health
from bus.errors import BusError
from bus.streaming.reach import wait_for_broker

router = APIRouter()


@router.get(
    "/asyncapi.json",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
               503: {"model": ErrorBody}},
    summary="The AsyncAPI document of the bus's Kafka topics (no key needed)",
)  # fmt: skip
async def asyncapi(
    state: State,
) -> JSONResponse:
    """Topics, event types and their Avro schemas, for systems that speak Kafka.

    The same document as `bus schemas asyncapi`, made from this gateway's settings.
    """
    from bus.streaming.asyncapi import asyncapi_document

    if state.asyncapi is None:
        try:
            state.asyncapi = asyncapi_document(state.settings, directory=state.directory)
        except BusError as exc:
            raise GatewayError(503, exc.reason, exc.message) from None
    return JSONResponse(state.asyncapi)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(
    state: State,
) -> Response:
    """Prometheus metrics of this gateway."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(
    state: State,
) -> JSONResponse:
    """Broker reachable (else 503) and a worker consuming ingress (else `degraded`).

    Without a worker the gateway still accepts events (they wait on ingress), so a
    missing worker does not fail the probe; it shows in `status`.
    """
    try:
        await wait_for_broker(state.settings.broker, 2, state.settings.kafka_security())
    except BusError:
        return JSONResponse(
            {"status": "down", "broker": "unreachable", "worker": "unknown"}, status_code=503
        )
    worker = await worker_alive(state.settings)
    status = "ok" if worker != "down" else "degraded"
    return JSONResponse({"status": status, "broker": "ok", "worker": worker})
