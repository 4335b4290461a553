"""The generation service end to end: a real Serve app on 127.0.0.1 with a tiny random bundle.

The app is built from infra/serve-tiny.yaml's own `args` (so that file is exercised), with a token, a fixed
single generator replica (so concurrent requests meet in one batch) and the SAM2 filter on random weights.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

ORGAN_MAP = {"1": "liver", "2": "spleen"}


def phantom_mask(size: int = 64) -> np.ndarray:
    """Two organs as ids 1 and 2 on background 0."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8: size // 2, size // 8: size // 2] = 1
    mask[size // 2: size - size // 8, size // 2: size - size // 6] = 2
    return mask


TOKEN = "test-token"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service(serve_port, serve_bundle):
    from ray import serve

    from mrgen.serving.app import GeneratorAppArgs, build_app

    args = yaml.safe_load((ROOT / "infra" / "serve-tiny.yaml").read_text())["applications"][0]["args"]
    app = build_app(GeneratorAppArgs(**{**args, "model": serve_bundle, "overrides": [
        f"auth_token={TOKEN}", "autoscaling.min_replicas=1", "autoscaling.max_replicas=1",
        "batching.batch_wait_timeout_s=0.3", "limits.max_body_bytes=200000",
        "filter.kind=sam2", "filter.organ_iou=0", "filter.organ_conf=0", "filter.mean_iou=0", "filter.mean_conf=0",
        # early rejection at a fifth of the steps: none at the tests' 2 steps (step 0), step 1 of 5
        "filter.early_reject_at=0.2", "filter.early_reject_below=0.5"]}))
    serve.run(app, name="mrgen-test", route_prefix="/")
    url = f"http://127.0.0.1:{serve_port}"
    yield url
    serve.delete("mrgen-test")


@pytest.fixture()
def http(service):
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
        yield client


def _body(**changes) -> dict:
    from mrgen.serving.client import request_body

    body = request_body(phantom_mask(), "T2 SPIR", ORGAN_MAP, n=1, steps=2, seed=7)
    body.update(changes)
    return body


def _decode(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def test_generate_end_to_end(service, serve_bundle):
    from mrgen.models.manifest import bundle_hash
    from mrgen.serving.client import GeneratorClient

    with GeneratorClient(service, token=TOKEN) as client:
        assert client.ready()
        first = client.generate(phantom_mask(), "T2 SPIR", ORGAN_MAP, n=3, steps=2, seed=123)
        again = client.generate(phantom_mask(), "T2 SPIR", ORGAN_MAP, n=2, steps=2, seed=123)
        other = client.generate(phantom_mask(), "T2 SPIR", ORGAN_MAP, n=1, steps=2, seed=999)
    assert [im.seed for im in first.images] == [123, 124, 125]
    assert all(im.image.shape == (64, 64) and im.image.dtype == np.uint8 for im in first.images)
    assert first.bundle_id == bundle_hash(serve_bundle)
    assert first.prompt.startswith("T2 SPIR; ") and "liver" in first.prompt and "spleen" in first.prompt
    assert first.raw["organs"] == ["liver", "spleen"]
    # a seed fixes its image, whatever else is generated alongside
    for a, b in zip(first.images[:2], again.images):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    assert np.abs(first.images[0].image.astype(int) - other.images[0].image.astype(int)).mean() > 1
    assert np.abs(first.images[0].image.astype(int) - first.images[1].image.astype(int)).mean() > 1


def test_openapi_health_modalities_metrics(service, http):
    spec = httpx.get(f"{service}/openapi.json").json()
    schema = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["n"]["maximum"] == 20 and "mask" in schema["required"]
    assert httpx.get(f"{service}/healthz").status_code == 200
    ready = httpx.get(f"{service}/readyz").json()
    assert ready["status"] == "ready" and ready["filter"] == "sam2"
    labels = [m["label"] for m in http.get("/v1/modalities").json()["modalities"]]
    assert "T2 SPIR" in labels and "T1 in-phase" in labels
    http.post("/v1/generate", json=_body())
    text = httpx.get(f"{service}/metrics").text
    assert 'mrgen_serve_requests_total{route="/v1/generate",status="200"}' in text
    assert "mrgen_serve_request_seconds_bucket" in text and "mrgen_serve_candidates_total" in text


def test_concurrent_requests_share_a_batch(service, http):
    def post(kwargs):
        response = http.post("/v1/generate", json=_body(**kwargs))
        assert response.status_code == 200, response.text
        return response.json()

    same = [{"seed": 100 + i} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, same))
    assert max(r["batch_size"] for r in results) > 1
    # settings that differ (steps) are sampled apart even when they arrive together
    mixed = [{"seed": 200 + i, "steps": 2 + i % 2} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, mixed))
    assert all(r["batch_size"] <= 3 for r in results)
    text = httpx.get(f"{service}/metrics").text
    count = [line for line in text.splitlines() if line.startswith("mrgen_serve_batch_size_count")]
    assert count and float(count[0].split()[-1]) >= 12
    # batching does not change what a seed produces
    batched = next(r for r in results if r["candidates"][0]["seed"] == 201)
    alone = post({"seed": 201, "steps": 3})
    assert alone["batch_size"] == 1
    assert np.abs(_decode(batched["candidates"][0]["image"]).astype(int)
                  - _decode(alone["candidates"][0]["image"]).astype(int)).max() <= 1


def test_keep_filters_with_sam2(http):
    """At thresholds 0 every candidate passes: the first wave (keep = 2 candidates) is all a request generates."""
    response = http.post("/v1/generate", json=_body(n=3, keep=2))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["generated"] == 2 and data["kept"] == len(data["candidates"]) == 2
    assert data["filter"].startswith("sam2:")
    for c in data["candidates"]:
        assert c["fate"] == "kept" and set(c["organ_scores"]) == {"liver", "spleen"}
        assert 0.0 <= c["score"] <= 1.0 and c["seed"] in (7, 8)
    unfiltered = http.post("/v1/generate", json=_body(n=2)).json()
    assert unfiltered["generated"] == 2 and unfiltered["kept"] is None
    # a mask without organs: nothing can pass, so every wave runs and nothing is kept (an answer, not an error)
    empty = http.post("/v1/generate", json=_body(mask=_png(np.zeros((64, 64), np.uint8)), n=3, keep=2))
    assert empty.status_code == 200, empty.text
    assert empty.json()["generated"] == 3 and empty.json()["kept"] == 0 and empty.json()["candidates"] == []


def test_early_rejection_stops_candidates_the_filter_finds_nothing_in(http):
    """At 5 steps the filter scores each candidate's x̂₀ at step 1: a mask without organs scores 0 against the cut
    0.5, so every candidate stops there, none is scored as finished, and the answer says so."""
    empty = _body(mask=_png(np.zeros((64, 64), np.uint8)), n=3, keep=2)
    response = http.post("/v1/generate", json={**empty, "steps": 5})
    assert response.status_code == 200, response.text
    data = response.json()
    assert (data["generated"], data["stopped_early"], data["kept"], data["candidates"]) == (3, 3, 0, [])
    # at 2 steps there is no step to judge at: the same request samples every candidate to the end
    full = http.post("/v1/generate", json=empty).json()
    assert (full["generated"], full["stopped_early"], full["kept"]) == (3, 0, 0)
    exposition = http.get("/metrics").text
    stopped = [line for line in exposition.splitlines()
               if line.startswith("mrgen_serve_candidates_total") and 'stage="stopped_early"' in line]
    assert stopped and float(stopped[0].split()[-1]) >= 3, stopped


def test_auth_required(service):
    body = _body()
    assert httpx.post(f"{service}/v1/generate", json=body, timeout=60).status_code == 401
    wrong = httpx.post(f"{service}/v1/generate", json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["detail"]
    assert httpx.get(f"{service}/v1/modalities").status_code == 401
    assert httpx.get(f"{service}/healthz").status_code == 200


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _bad_bodies() -> dict[str, tuple[object, str]]:
    """kind → (body: dict, or raw bytes, to send; a word the error message must contain)."""
    png = base64.b64decode(_png(phantom_mask()))
    big = np.zeros((256, 256), np.uint8)
    unknown_id = phantom_mask()
    unknown_id[0, 0] = 9
    return {
        "invalid json": (b'{"modality": "T2", ', "JSON"),
        "empty body": (b"", "empty"),
        "json array": (b"[1, 2]", "body"),
        "missing mask": ({k: v for k, v in _body().items() if k != "mask"}, "mask"),
        "bad base64": (_body(mask="not base64!!"), "base64"),
        "not a png": (_body(mask=base64.b64encode(b"GIF89a....").decode()), "PNG"),
        "truncated png": (_body(mask=base64.b64encode(png[:60]).decode()), "PNG"),
        "rgb png": (_body(mask=_png(np.zeros((64, 64, 3), np.uint8))), "single-channel"),
        "not square": (_body(mask=_png(np.zeros((64, 32), np.uint8))), "square"),
        "odd size": (_body(mask=_png(np.zeros((42, 42), np.uint8))), "multiple"),
        "image too large": (_body(mask=_png(big)), "exceeds"),
        "unknown modality": (_body(modality="ultrasound elastography"), "unknown modality"),
        "organ id not in map": (_body(mask=_png(unknown_id)), "[9]"),
        "organ map key": (_body(organ_map={"liver": "1"}), "organ_map"),
        "n zero": (_body(n=0), "n"),
        "n too many": (_body(n=21), "n"),
        "steps zero": (_body(steps=0), "steps"),
        "steps over limit": (_body(steps=51), "limit"),
        "negative guidance": (_body(guidance=-1), "guidance"),
        "guidance over limit": (_body(guidance=1000), "limit"),
        "negative conditioning scale": (_body(conditioning_scale=-1), "conditioning_scale"),
        "conditioning scale over limit": (_body(conditioning_scale=50), "conditioning_scale"),
        "unknown sampler": (_body(sampler="euler"), "sampler"),
        "negative seed": (_body(seed=-5), "seed"),
        "zero timeout": (_body(timeout_s=0), "timeout_s"),
        "seed not a number": (_body(seed="abc"), "seed"),
        "unknown field": (_body(colour="red"), "colour"),
        "unknown region": (_body(region="knee"), "region"),
        "keep more than n": (_body(n=2, keep=3), "keep"),
        "keep zero": (_body(keep=0), "keep"),
        "body too large": (_body(padding="x" * 300_000), "limit"),
    }


BAD = _bad_bodies()


def _png_header(width: int, height: int) -> str:
    """A PNG that is only a header (IHDR, IEND) claiming ``width`` x ``height``: a few bytes, no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + header).decode()


# kind → (body, status, the field the answer must name): what a probe as a new user found answered 5xx or 200
HOSTILE = {
    "png header claiming 20000x20000": (_body(mask=_png_header(20000, 20000)), 413, "mask"),
    "json nested 100,000 levels": (b"[" * 100_000 + b"]" * 100_000, 400, "body"),
    "NUL in modality": (_body(modality="T2\x00SPIR"), 422, "modality"),
    "escape sequence in an organ name": (_body(organ_map={"1": "liver\x1b[2J", "2": "spleen"}), 422, "organ_map"),
    "control character in organs": (_body(organs=["liver", "spleen\x07"]), 422, "organs"),
    "control character in region": (_body(region="abdomen\r\n"), 422, "region"),
}


def _post(http, body) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post("/v1/generate", content=body, headers={"Content-Type": "application/json"})
    return http.post("/v1/generate", json=body)


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_is_4xx(http, kind):
    body, word = BAD[kind]
    response = _post(http, body)
    assert 400 <= response.status_code < 500, (kind, response.status_code, response.text)
    detail = response.json()["detail"]
    assert word.lower() in json.dumps(response.json()).lower(), (kind, detail)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_input_is_4xx_naming_the_field(http, kind):
    body, status, field = HOSTILE[kind]
    response = _post(http, body)
    assert response.status_code == status, (kind, response.status_code, response.text)
    assert response.json()["field"].split(".")[0] == field, (kind, response.json())


def test_healthy_after_bad_input(service, http):
    statuses = {kind: _post(http, body).status_code for kind, (body, *_) in {**BAD, **HOSTILE}.items()}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert httpx.get(f"{service}/healthz").status_code == 200
    assert httpx.get(f"{service}/readyz").status_code == 200
    response = http.post("/v1/generate", json=_body(n=2))
    assert response.status_code == 200 and len(response.json()["candidates"]) == 2
    text = httpx.get(f"{service}/metrics").text
    assert 'status="500"' not in text


def test_timeout_is_504_and_service_stays_up(service, http):
    response = http.post("/v1/generate", json=_body(n=2, steps=50, timeout_s=0.2))
    assert response.status_code == 504 and "request_timeout_s" in response.json()["detail"]
    assert httpx.get(f"{service}/healthz").status_code == 200
    ok = http.post("/v1/generate", json=_body())
    assert ok.status_code == 200, ok.text


def test_generate_command_writes_pngs_and_json(service, tmp_path):
    from mrgen.cli.main import main

    mask_file = tmp_path / "mask.png"
    Image.fromarray(phantom_mask()).save(mask_file)
    out = tmp_path / "out"
    code = main(["generate", "--url", service, "--mask", str(mask_file), "--modality", "T1 in-phase",
                 "--organ-map", json.dumps(ORGAN_MAP), "--n", "2", "--seed", "5", "--steps", "2",
                 "--token", TOKEN, "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "generation.json").read_text())
    assert [c["seed"] for c in summary["candidates"]] == [5, 6]
    for c in summary["candidates"]:
        assert np.asarray(Image.open(out / c["file"])).shape == (64, 64)
    assert main(["generate", "--url", service, "--mask", str(mask_file), "--modality", "T1", "--out",
                 str(tmp_path / "x")]) == 1  # no token: 401, reported, nothing written
    assert not (tmp_path / "x").exists()
