"""Ingress deployment: the FastAPI face of the service (routes, limits, auth, timeouts, metrics).

It validates every request itself (`serving/inputs.py`), so bad input is a 4xx answered here and never reaches
the generator; only valid jobs are forwarded. `/metrics` is this replica's prometheus-client registry; the
generator and filter replicas report through `ray.serve.metrics` (Ray's own exporter).
"""

import asyncio
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from mrgen.datasets.modality import MODALITY_TABLE
from mrgen.serving import http_metrics
from mrgen.serving.config import ServeConfig
from mrgen.serving.inputs import BadRequest, encode_png, parse_request
from mrgen.serving.schemas import Candidate, GenerateRequest, GenerateResponse, GenerationJob, GenerationResult
from mrgen.serving.waves import generate_in_waves

log = logging.getLogger("mrgen.serving")

api = FastAPI(title="MRGen generation API", version="1",
              description="Mask-conditioned MRI synthesis for a target modality (MRGen).")


@api.middleware("http")
async def _count_requests(request: Request, call_next):
    start = time.perf_counter()
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        http_metrics.record_request(path, status, time.perf_counter() - start)


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"detail": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


_GENERATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def _candidates(result: GenerationResult, picked: dict | None) -> list[Candidate]:
    """Every candidate in seed order, or (``picked``: the filter's choice) those kept, best first, with scores."""
    if picked is None:
        return [Candidate(image=encode_png(image), seed=seed) for image, seed in zip(result.images, result.seeds)]
    rows = {row["index"]: row for row in picked["scores"]}
    return [Candidate(image=encode_png(result.images[i]), seed=result.seeds[i], score=rows[i]["mean_iou"],
                      organ_scores=rows[i]["organs"], fate=rows[i]["fate"]) for i in picked["kept"]]


@serve.ingress(api)
class Ingress:
    def __init__(self, generator, quality_filter, config: dict):
        self.config = ServeConfig.model_validate(config)
        self.token = self.config.resolve_token()
        self.generator = generator
        self.filter = quality_filter
        self._info: dict | None = None
        self._filter_info: dict | None = None

    async def _generator_info(self) -> dict:
        if self._info is None:
            self._info = await asyncio.wait_for(self.generator.info.remote(), timeout=30)
        return self._info

    async def _filter_description(self) -> dict | None:
        """What the filter replica filters with (None: no filter)."""
        if self.filter is not None and self._filter_info is None:
            self._filter_info = await asyncio.wait_for(self.filter.describe.remote(), timeout=30)
        return self._filter_info

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if not self.token:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                          headers={"WWW-Authenticate": "Bearer"})
        return None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        try:
            info = await self._generator_info()
            quality_filter = await self._filter_description()
        except Exception as exc:  # not ready yet: the generator or the filter is starting or gone
            return _error(503, f"not ready: {type(exc).__name__}: {exc}")
        return {"status": "ready", "bundle_id": info["bundle_id"],
                "filter": self.config.filter.kind if self.filter is not None else None,
                "filter_model": quality_filter and quality_filter["model"],
                "thresholds": quality_filter and quality_filter["thresholds"]}

    @api.get("/metrics")
    async def prometheus(self):
        return PlainTextResponse(http_metrics.exposition(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/modalities")
    async def modalities(self, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            official = (await self._generator_info()).get("prompt_template") == "official"
        except Exception:  # not ready: the configured table still answers
            official = False
        table = {**({} if official else MODALITY_TABLE), **self.config.modality_attributes}
        note = ("the official release's labels: looked up exactly, others get 422" if official else
                "other spellings and free text are mapped onto these labels; unknown ones get 422")
        return {"modalities": [{"label": k, "attributes": v} for k, v in table.items()], "note": note}

    @api.post("/v1/generate", response_model=GenerateResponse, openapi_extra=_GENERATE_BODY,
              responses={401: {"description": "missing or wrong bearer token"},
                         413: {"description": "body or image too large"}, 422: {"description": "invalid input"},
                         503: {"description": "at capacity or not ready"}, 504: {"description": "timed out"}})
    async def generate(self, request: Request):
        if (denied := self._unauthorized(request)) is not None:
            return denied
        http_metrics.inflight(1)
        try:
            return await self._generate(request)
        except BadRequest as exc:
            return _error(exc.status, str(exc), exc.field)
        except (asyncio.TimeoutError, TimeoutError):
            return _error(504, "generation did not finish in time (the request's timeout_s, at most "
                               f"serve.request_timeout_s = {self.config.request_timeout_s} s)")
        except BackPressureError:
            return _error(503, "the generator is at capacity (serve.max_queued_requests); retry later",
                          headers={"Retry-After": "1"})
        except DeploymentUnavailableError as exc:
            return _error(503, f"generator unavailable: {exc}", headers={"Retry-After": "5"})
        except Exception as exc:  # a fault of the service, not of the request: logged, answered as JSON
            log.exception("generate failed")
            return _error(500, f"internal error ({type(exc).__name__}); see the service logs")
        finally:
            http_metrics.inflight(-1)

    async def _generate(self, request: Request):
        body = await self._read_body(request)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest("body", f"not valid JSON: {exc}", status=400) from None
        except RecursionError:
            raise BadRequest("body", "JSON nested too deeply; send a flat object (see /openapi.json)",
                             status=400) from None
        try:
            req = GenerateRequest.model_validate(payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "body"
            extra = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
            raise BadRequest(field, f"{err['msg']}{extra}") from None
        if req.keep is not None and self.filter is None:
            raise BadRequest("keep", "this service runs without a filter (serve.filter.kind=none; `mrgen serve "
                                     "--filter medsam --thresholds FILE` filters)")
        start = time.perf_counter()
        timeout_s = min(req.timeout_s or self.config.request_timeout_s, self.config.request_timeout_s)
        async with asyncio.timeout(timeout_s):
            info = await self._generator_info()
            parsed = parse_request(req, self.config, size_multiple=info["size_multiple"],
                                   condition=info.get("condition"),
                                   prompt_template=info.get("prompt_template", "mrgen"))
            if parsed.keep is None:
                result, picked = await self._sample(parsed.job), None
            else:
                result, picked = await self._filtered(parsed.job, parsed.keep, parsed.organs)
        candidates = _candidates(result, picked)
        http_metrics.record_returned(len(candidates))
        return GenerateResponse(bundle_id=result.bundle_id, prompt=parsed.job.prompt,
                                modality_attributes=parsed.attributes, organs=parsed.organs,
                                candidates=candidates, generated=result.generated,
                                stopped_early=result.stopped,
                                kept=None if picked is None else len(candidates),
                                filter=None if picked is None else picked["filter"],
                                batch_size=result.batch_size, seconds=round(time.perf_counter() - start, 4))

    async def _sample(self, job: GenerationJob) -> GenerationResult:
        result = await self.generator.generate.remote(job)
        http_metrics.record_generation(result.batch_size, result.generated, result.stopped)
        return result

    async def _filtered(self, job: GenerationJob, keep: int, organs: list[str]) -> tuple[GenerationResult, dict]:
        """The job's candidates in waves until ``keep`` pass strictly (serve.filter.adaptive), and the filter's
        choice among all of them (`Filter.select`)."""
        def score(images, start_index: int):
            return self.filter.score.remote(images, job.mask, job.organ_map, organs, start_index)

        result = await generate_in_waves(job, keep, self.config.filter.per_wave(len(job.seeds), keep), self._sample,
                                         score)
        picked = await self.filter.select.remote(result.scores, keep)
        http_metrics.record_kept(len(picked["kept"]))
        return result, picked

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest("content-length", f"not a number: {declared!r}", status=400)
            if int(declared) > limit:
                raise BadRequest("body", f"{declared} bytes exceed the limit of {limit} (serve.limits.max_body_bytes)",
                                 status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest("body", f"more than {limit} bytes (serve.limits.max_body_bytes)", status=413)
            chunks.append(chunk)
        if size == 0:
            raise BadRequest("body", "empty; send a JSON object (see /openapi.json)", status=400)
        return b"".join(chunks)
