"""GET /health, /health/ready, /metrics and /v1/models."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..http import server_of

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/health/ready")
async def health_ready(request: Request):
    ready, body = server_of(request).health()
    return body if ready else JSONResponse(body, status_code=503)


@router.get("/metrics")
async def metrics(request: Request):
    server = server_of(request)
    server.authorize(request.headers)
    return Response(server.metrics.render(), media_type=server.metrics.content_type)


@router.get("/v1/models")
async def models(request: Request):
    server = server_of(request)
    server.authorize(request.headers)
    return {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "moai-edge"}]}
