"""``flawscope serve``: the inspection station over HTTP (FastAPI), with the review page at ``/``.

Routes (all in the OpenAPI page at ``/docs``): ``POST /v1/inspect``, ``GET /v1/inspections``,
``GET /v1/inspections/{id}`` and its ``/image``, ``/overlay``, ``/mask``, ``POST /v1/inspections/{id}/verdict``,
``GET /v1/stats``, ``GET /v1/models``, ``POST /v1/models/{name}/update``, ``/recalibrate`` and ``/rollback``,
``GET /health``, ``GET /metrics`` (Prometheus). With a token every write route needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from importlib import resources
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flawscope.errors import DataError
from flawscope.service.log import Inspection
from flawscope.service.station import InspectionFailed, LoadedModel, NotPossible, Station
from flawscope.service.stats import log_stats

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
_MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "tif": "image/tiff", "bmp": "image/bmp", "webp": "image/webp"}
_PICTURES = {"image": "image_key", "overlay": "overlay_key", "mask": "mask_key"}


class VerdictIn(BaseModel):
    verdict: Literal["ok", "defect"] = Field(description="'defect': a real defect; 'ok': a good part (false alarm).")
    note: str | None = Field(default=None, max_length=2000)
    operator: str | None = Field(default=None, max_length=200)
    teach: bool = Field(
        default=False,
        description="With verdict 'ok' (a false alarm): queue the image to be taught to its model as good at the "
        "model's next update (POST /v1/models/{name}/update). PatchCore and PaDiM models only.",
    )


class _Metrics:
    """The Prometheus figures of one app (its own registry, so that several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flawscope_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "flawscope_inspection_latency_seconds",
            "Time to inspect one image (decode, score, draw, store): the latency_ms of its log row",
            ["model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.inspections = Counter(
            "flawscope_inspections", "Inspections by model and label", ["model", "label"], registry=self.registry
        )


class _CountRequests:
    """Count every HTTP answer by route template and status (a plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` runs each request through extra tasks and streams)."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                self.counter.labels(getattr(route, "path", "unmatched"), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(
    station: Station, *, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> FastAPI:
    """The FastAPI application serving ``station``."""
    app = FastAPI(
        title="flawscope inspection station",
        description="OK / NOT OK per part from fitted flawscope models, an inspection log and operator verdicts.",
        version="1",
    )
    metrics = _Metrics()

    app.add_middleware(_CountRequests, counter=metrics.requests)

    def require_token(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(
                401, "This route needs 'Authorization: Bearer <token>'.", {"WWW-Authenticate": "Bearer"}
            )

    def inspection_json(row: Inspection) -> dict[str, Any]:
        body = row.to_json()
        for picture, column in _PICTURES.items():
            body[f"{picture}_url"] = f"/v1/inspections/{row.id}/{picture}" if getattr(row, column) else None
        return body

    @app.post("/v1/inspect", dependencies=[Depends(require_token)], tags=["inspect"])
    def inspect(
        request: Request,
        image: UploadFile = File(description="The part's image, any format Pillow reads."),
        model: str | None = Form(default=None, description="Which served model (needed when several are served)."),
        part_id: str | None = Form(default=None, max_length=200),
        station_name: str | None = Form(default=None, alias="station", max_length=200),
    ) -> JSONResponse:
        """Inspect one image: score, OK / NOT OK at the model's threshold, defect boxes, stored pictures."""
        too_large = HTTPException(413, f"Uploads are limited to {max_upload_bytes:,} bytes (--max-upload-mb).")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes + 64 * 1024:
            raise too_large
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise too_large
        try:
            row = station.inspect(data, model=model, part_id=part_id, station=station_name, filename=image.filename)
        except InspectionFailed as failure:
            metrics.inspections.labels(failure.inspection.model or "unknown", "failed").inc()
            return JSONResponse({"detail": failure.inspection.error, "id": failure.inspection.id}, status_code=422)
        metrics.latency.labels(row.model).observe(row.latency_ms / 1000)
        metrics.inspections.labels(row.model, str(row.label)).inc()
        return JSONResponse(inspection_json(row))

    @app.get("/v1/inspections", tags=["log"])
    def list_inspections(
        label: Literal["OK", "NOT OK", "failed"] | None = None,
        verdict: Literal["ok", "defect", "none"] | None = Query(default=None, description="'none': not reviewed yet"),
        model: str | None = None,
        since: float | None = Query(default=None, description="Unix time; inspections at or after it."),
        before_id: int | None = Query(default=None, description="Page: inspections older than this id."),
        limit: int = Query(default=50, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Inspections newest first, with their latest verdict."""
        rows = station.log.query(
            label=label, verdict=verdict, model=model, since=since, before_id=before_id, limit=limit, offset=offset
        )
        return {"inspections": [inspection_json(row) for row in rows], "next_before_id": rows[-1].id if rows else None}

    def find(inspection_id: int) -> Inspection:
        row = station.log.get(inspection_id)
        if row is None:
            raise HTTPException(404, f"No inspection {inspection_id}.")
        return row

    @app.get("/v1/inspections/{inspection_id}", tags=["log"])
    def get_inspection(inspection_id: int) -> dict[str, Any]:
        return inspection_json(find(inspection_id))

    @app.get("/v1/inspections/{inspection_id}/{picture}", tags=["log"], response_class=FileResponse)
    def get_picture(inspection_id: int, picture: Literal["image", "overlay", "mask"]) -> FileResponse:
        """The stored upload, heat-map overlay or defect mask of an inspection."""
        key = getattr(find(inspection_id), _PICTURES[picture])
        if key is None or station.store is None:
            raise HTTPException(404, f"Inspection {inspection_id} has no stored {picture}.")
        path = station.store.path(key)
        if not path.is_file():
            raise HTTPException(404, f"The stored {picture} of inspection {inspection_id} is missing from the store.")
        media_type = _MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=31536000, immutable"})

    @app.post("/v1/inspections/{inspection_id}/verdict", dependencies=[Depends(require_token)], tags=["log"])
    def post_verdict(inspection_id: int, body: VerdictIn) -> dict[str, Any]:
        """An operator's verdict on an inspection: 'defect' confirms a defect, 'ok' says the part is good; with
        ``teach``, the good part's image is queued to be taught to the model."""
        station.add_verdict(find(inspection_id), body.verdict, body.note, body.operator, teach=body.teach)
        return inspection_json(find(inspection_id))

    @app.get("/v1/stats", tags=["log"])
    def stats(model: str | None = None) -> dict[str, Any]:
        """Counts, NOT OK rate, score histogram with the threshold, verdict agreement and drift, per model."""
        return log_stats(station.log, model)

    def model_json(model: LoadedModel) -> dict[str, Any]:
        hidden = ("calibration_scores", "directory")
        return {
            **{key: value for key, value in asdict(model.describe()).items() if key not in hidden},
            "updatable": model.updatable,
            "queued_to_teach": station.pending(model.name),
        }

    @app.get("/v1/models", tags=["models"])
    def served_models() -> list[dict[str, Any]]:
        """Each served model's name, version (content hash), the version it was updated from, method, threshold,
        and how many images wait to be taught to it."""
        return [model_json(model) for model in station.models.values()]

    def served(name: str) -> str:
        if name not in station.models:
            raise HTTPException(404, f"No model named {name!r} is served here; served: {', '.join(station.models)}.")
        return name

    @app.post("/v1/models/{name}/update", dependencies=[Depends(require_token)], tags=["models"])
    def update_model(name: str) -> dict[str, Any]:
        """Teach the model every image queued for it and serve the new version from the next request on (requests
        on their way are answered by the version they started with). The threshold stays as calibrated."""
        update = station.update_model(served(name))
        return {"update": update, "model": model_json(station.models[name])}

    @app.post("/v1/models/{name}/recalibrate", dependencies=[Depends(require_token)], tags=["models"])
    def recalibrate_model(name: str) -> dict[str, Any]:
        """Set the threshold again from the operators' verdicts in the log (parts confirmed good, except those
        taught; with confirmed defects the best-F1 rule) and serve that version from the next request on."""
        recalibration = station.recalibrate_model(served(name))
        return {"recalibration": recalibration, "model": model_json(station.models[name])}

    @app.post("/v1/models/{name}/rollback", dependencies=[Depends(require_token)], tags=["models"])
    def rollback_model(name: str) -> dict[str, Any]:
        """Serve again the version the present one was made from (the images it was taught stay marked taught)."""
        return model_json(station.rollback(served(name)))

    @app.get("/health", tags=["service"])
    def health() -> JSONResponse:
        """200 when every model is loaded and the log takes writes; 503 otherwise."""
        writable = station.log.is_writable()
        body = {
            "status": "ok" if writable else "unavailable",
            "models": list(station.models),
            "database_writable": writable,
        }
        return JSONResponse(body, status_code=200 if writable else 503)

    @app.get("/metrics", tags=["service"])
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(DataError)
    def bad_input(_: Request, error: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(NotPossible)
    def conflict(_: Request, error: NotPossible) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    static = resources.files("flawscope.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    return app
