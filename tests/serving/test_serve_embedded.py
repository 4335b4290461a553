"""`mrgen serve --model embedded` as a new user runs it: the embedded bundle ships LiteMedSAM thresholds that the
project's own `mrgen filter calibrate` made (its manifest's ``filter`` records the command), its service filters
with them unless told not to, and a request with ``keep`` and no ``n`` (what `mrgen generate --keep 2` sends)
generates in waves until ``keep`` pass, answering how many it generated and kept, which /metrics counts too."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mrgen.models.manifest import EMBEDDED, FILTER_THRESHOLDS, MANIFEST, embedded_bundle
from mrgen.models.scorer_base import ScorerSettings
from mrgen.models.selection import CandidateScores, OrganScore, Thresholds, load_calibration

THRESHOLDS = str(Path(embedded_bundle()) / FILTER_THRESHOLDS)
FIELDS = ("organ_iou", "organ_conf", "mean_iou", "mean_conf")


def _shipped() -> Thresholds:
    t = load_calibration(THRESHOLDS).thresholds
    return Thresholds(*(getattr(t, k) for k in FIELDS))


def test_shipped_thresholds_are_what_the_recorded_command_made():
    from mrgen.cli.filter import calibrate_config
    from mrgen.cli.main import build_parser

    calibration = load_calibration(THRESHOLDS)
    assert calibration.scorer == "medsam" and calibration.slices == 48 and calibration.quantile == 0.25
    assert calibration.filters == {"dataset": ["phantom-src"], "split": "train"}
    assert calibration.scorer_id == ScorerSettings().model_id("medsam")  # made by today's default scorer (bf16)
    manifest = json.loads((Path(embedded_bundle()) / MANIFEST).read_text())
    record = manifest["filter"]
    assert record["thresholds_file"] == FILTER_THRESHOLDS and record["created"] and record["code"]["commit"]
    assert record["thresholds"] == calibration.thresholds.model_dump()
    assert record["db_digest"] == manifest["training"]["db_digest"]  # the DB the bundle trained on
    command = next(c for c in record["commands"] if c.startswith("mrgen filter calibrate")).split()
    args = build_parser().parse_args(command[1:])  # the recorded command is today's CLI, the demo's settings
    config = calibrate_config(args)
    assert (config.filter.kind, config.quantile, config.limit, config.dataset, config.split) == \
        ("medsam", 0.25, 48, ["phantom-src"], "train")
    assert command[command.index("--out") + 1].endswith(f"tiny-phantom/{FILTER_THRESHOLDS}")


def test_embedded_service_config_filters_unless_told_not_to(serve_bundle):
    from mrgen.cli.main import build_parser
    from mrgen.cli.serve import serve_config

    def resolved(*flags: str):
        return serve_config(build_parser().parse_args(["serve", *flags])).resolved().filter

    default = resolved("--model", EMBEDDED)
    assert default.enabled and default.kind == "medsam" and default.thresholds.thresholds() == _shipped()
    assert default.thresholds_file == THRESHOLDS and default.adaptive
    assert not resolved("--model", EMBEDDED, "--filter", "none").enabled
    assert not resolved("--model", EMBEDDED, "--set", "filter.kind=none").enabled
    assert not resolved("--model", EMBEDDED, "--filter", "none", "--thresholds", THRESHOLDS).enabled
    assert not resolved("--model", serve_bundle).enabled  # a bundle without a calibration: no filter
    given = resolved("--model", serve_bundle, "--thresholds", THRESHOLDS)  # its scorer comes with the file
    assert given.kind == "medsam" and given.thresholds.thresholds() == _shipped()


def _scores(start: int, passing: list[bool]) -> list[CandidateScores]:
    return [CandidateScores(start + i, [OrganScore("liver", 0.9 if ok else 0.1, 0.9 if ok else 0.1)])
            for i, ok in enumerate(passing)]


@pytest.mark.parametrize("verdicts, keep, per_wave, waves", [
    ([True, True, True, True, True, True], 2, 2, 1),    # the first wave passes: nothing more is sampled
    ([True, False, False, True, True, True], 2, 2, 2),  # one of the first two: a second wave
    ([False] * 6, 2, 2, 3),                             # none: every seed is used
    ([True, False, True, True, False], 2, 4, 1),        # wave sizes other than keep; a short last wave
    ([False, False, False, False, True], 1, 4, 2),
])
def test_waves_stop_once_keep_pass(verdicts, keep, per_wave, waves):
    from mrgen.models.sampling import SamplingSettings
    from mrgen.serving.schemas import GenerationJob, GenerationResult
    from mrgen.serving.waves import generate_in_waves

    job = GenerationJob(prompt="p", mask=np.zeros((8, 8), np.uint8), seeds=[100 + i for i in range(len(verdicts))],
                        sampling=SamplingSettings("ddim", 1, 1.0))
    sampled: list[list[int]] = []

    async def generate(wave: GenerationJob) -> GenerationResult:
        sampled.append(wave.seeds)
        images = np.stack([np.full((8, 8), s, np.float32) for s in wave.seeds])
        return GenerationResult(images=images, seeds=list(wave.seeds), batch_size=len(sampled), bundle_id="b")

    async def score(images: np.ndarray, start: int) -> dict:
        scores = _scores(start, verdicts[start:start + len(images)])
        return {"scores": scores, "strict": sum(c.passes(Thresholds()) for c in scores)}

    result = asyncio.run(generate_in_waves(job, keep, per_wave, generate, score))
    assert result.waves == len(sampled) == waves
    assert result.seeds == job.seeds[:len(result.seeds)] == [s for wave in sampled for s in wave]  # a prefix
    assert [c.index for c in result.scores] == list(range(len(result.seeds)))
    assert result.images[:, 0, 0].tolist() == result.seeds and result.batch_size == waves
    passed = sum(verdicts[:len(result.seeds)])
    assert passed >= keep or len(result.seeds) == len(verdicts)


def test_waves_skip_candidates_stopped_early():
    """Candidates the generator stopped early have no image: they are not scored, scores index the finished ones,
    and a wave that lost every candidate is followed by the next."""
    from mrgen.models.sampling import SamplingSettings
    from mrgen.serving.schemas import GenerationJob, GenerationResult
    from mrgen.serving.waves import generate_in_waves

    stops = {100, 101, 103}  # the whole first wave, and one of the second
    job = GenerationJob(prompt="p", mask=np.zeros((8, 8), np.uint8), seeds=[100, 101, 102, 103, 104, 105],
                        sampling=SamplingSettings("ddim", 1, 1.0))
    starts: list[int] = []

    async def generate(wave: GenerationJob) -> GenerationResult:
        seeds = [s for s in wave.seeds if s not in stops]
        images = np.stack([np.full((8, 8), s, np.float32) for s in seeds]) if seeds else np.zeros((0, 8, 8))
        return GenerationResult(images=images, seeds=seeds, batch_size=1, bundle_id="b",
                                stopped=len(wave.seeds) - len(seeds))

    async def score(images: np.ndarray, start: int) -> dict:
        starts.append(start)
        scores = _scores(start, [True] * len(images))
        return {"scores": scores, "strict": len(scores)}

    result = asyncio.run(generate_in_waves(job, 2, 2, generate, score))
    assert (result.waves, result.stopped, result.seeds, starts) == (3, 3, [102, 104, 105], [0, 1])
    assert [c.index for c in result.scores] == [0, 1, 2] and result.images[:, 0, 0].tolist() == result.seeds


def test_keep_without_n_gets_the_filter_budget():
    from mrgen.serving.client import request_body
    from mrgen.serving.config import ServeConfig
    from mrgen.serving.inputs import BadRequest, parse_request
    from mrgen.serving.schemas import GenerateRequest

    mask = np.zeros((64, 64), np.uint8)
    mask[8:30, 8:30] = 1

    def seeds(config: ServeConfig, n: int | None = None, **options) -> int:
        request = GenerateRequest(**request_body(mask, "T2 SPIR", {1: "liver"}, n=n, seed=0, **options))
        return len(parse_request(request, config).job.seeds)

    tiny = ServeConfig.load("tiny")
    assert seeds(tiny) == 1 and seeds(tiny, keep=2) == tiny.filter.candidates == 4
    assert seeds(tiny, keep=2, n=3) == 3 and seeds(tiny, keep=6) == 6
    assert seeds(ServeConfig.load("tiny", ["limits.max_n=3"]), keep=2) == 3
    with pytest.raises(BadRequest, match="keep"):
        seeds(tiny, keep=2, n=1)
    assert tiny.filter.per_wave(4, 2) == 2 and tiny.filter.model_copy(update={"adaptive": False}).per_wave(4, 2) == 4


def _phantom_slice() -> tuple[np.ndarray, dict[str, str]]:
    """The slice of the tiny phantom's first source volume with the most organ pixels, and its organ map."""
    from mrgen.datasets.phantom import ORGAN_IDS, PhantomConfig, plan_volumes, render_volume

    config = PhantomConfig.load("tiny")
    _, labels, _, _ = render_volume(config, plan_volumes(config)[0])
    mask = labels[int(np.argmax((labels > 0).sum(axis=(1, 2))))]
    return mask, {str(i): ORGAN_IDS[int(i)] for i in np.unique(mask) if i}


def _candidate_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {"generated": 0.0, "kept": 0.0, "returned": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "mrgen_serve_candidates_total":
                counts[sample.labels["stage"]] = sample.value
    return counts


@pytest.fixture(scope="module")
def embedded_service(serve_port):
    from ray import serve

    from mrgen.serving.app import GeneratorAppArgs, build_app

    app = build_app(GeneratorAppArgs(model=EMBEDDED, config="tiny", overrides=[
        "autoscaling.min_replicas=1", "autoscaling.max_replicas=1"]))
    serve.run(app, name="mrgen-embedded", route_prefix="/embedded")
    yield f"http://127.0.0.1:{serve_port}/embedded"
    serve.delete("mrgen-embedded")


def test_generate_keep_2_on_the_embedded_service(embedded_service, tmp_path, capsys):
    """`mrgen generate --keep 2` (no --n) against the default embedded service: answered 200, in waves of 2 up to
    the filter's budget of 4, kept ≤ 2 ≤ generated, with the shipped thresholds; the counters move by as much."""
    from mrgen.cli.main import main

    ready = httpx.get(f"{embedded_service}/readyz", timeout=60).json()
    assert ready["filter"] == "medsam" and ready["filter_model"].startswith("medsam:")
    assert Thresholds(**ready["thresholds"]) == _shipped()  # what the filter replica itself holds
    mask, organ_map = _phantom_slice()
    Image.fromarray(mask).save(tmp_path / "mask.png")
    before = _candidate_counts(embedded_service)
    code = main(["generate", "--url", embedded_service, "--mask", str(tmp_path / "mask.png"), "--modality",
                 "T2 SPIR", "--organ-map", json.dumps(organ_map), "--keep", "2", "--seed", "0", "--steps", "20",
                 "--sampler", "dpm", "--guidance", "4", "--out", str(tmp_path / "out")])
    said = capsys.readouterr()
    assert code == 0, said.err
    summary = json.loads((tmp_path / "out" / "generation.json").read_text())
    generated, kept, candidates = summary["generated"], summary["kept"], summary["candidates"]
    print(f"embedded service, keep 2: generated {generated}, kept {kept}: "
          f"{[(c['seed'], c['fate'], round(c['score'] or 0, 3)) for c in candidates]}")
    assert f"kept {kept} of {generated} generated" in said.out
    assert kept == len(candidates) <= 2 <= generated <= 4 and generated % 2 == 0  # waves of keep, budget 4
    fates = [c["fate"] for c in candidates]
    assert generated == 4 or fates == ["kept", "kept"]  # a second wave only when the first did not pass
    assert [c["seed"] for c in candidates if c["seed"] >= generated] == []
    t = _shipped()
    for c in candidates:
        assert c["fate"] in ("kept", "kept_relaxed") and set(c["organ_scores"]) == set(organ_map.values())
        floor = t if c["fate"] == "kept" else t.relaxed()
        assert all(o["iou"] >= floor.organ_iou - 1e-6 and o["conf"] >= floor.organ_conf - 1e-6
                   for o in c["organ_scores"].values()), c
        assert c["score"] >= floor.mean_iou - 1e-6
    after = _candidate_counts(embedded_service)
    assert after["generated"] - before["generated"] == generated
    assert after["kept"] - before["kept"] == kept and after["returned"] - before["returned"] == kept
