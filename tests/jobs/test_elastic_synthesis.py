"""`mrgen synthesize` on a multi-node Ray cluster on this machine (jobs/bench/elastic.py): a node joins, a node dies,
the driver dies. Every mask is written exactly once and the kept candidates are bit-identical to an undisturbed run
with the same seed; nothing is left half-written."""
from __future__ import annotations

import pytest

from mrgen.jobs.bench.elastic import (LocalCluster, driver_dies, node_joins, out_of, outcome, synth_settings,
                                      undisturbed)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def cluster(tiny_db, session_ray_paused):
    with LocalCluster() as c:
        yield c


@pytest.fixture(scope="module")
def settings(tiny_db, tmp_path_factory):
    from mrgen.models.bundle import build_random_bundle

    root = tmp_path_factory.mktemp("elastic")
    build_random_bundle("tiny").save(str(root / "bundle"))
    return lambda name: synth_settings(str(root / "bundle"), tiny_db, str(root / name))


@pytest.fixture(scope="module")
def reference(cluster, settings) -> str:
    """The undisturbed run: head and one worker node (each pool's two actors running)."""
    run = settings("undisturbed")
    undisturbed(cluster, run, workers=1)
    return out_of(run)


def _whole(run: list[str], reference: str, seen: dict) -> dict:
    figures = {**outcome(out_of(run), reference), **seen}
    print(figures)
    assert figures["masks"] == 64, figures  # 32 masks x 2 modalities in the undisturbed run
    assert figures["masks_lost"] == 0 and figures["masks_duplicated"] == 0, figures
    assert figures["kept_bit_identical"] and figures["half_written"] == [], figures
    return figures


def test_node_joins_the_pools_grow_onto_it_then_it_dies(cluster, settings, reference):
    """A worker joins a head-only run; both pools grow onto it (with ``pool_upscale_util`` 1.0 a busy pool grows,
    not only the bottleneck's: under Ray Data's default 1.75 the filter grew in 1 of 5 runs here); then the node,
    holding a generator actor with masks in flight, is killed. One run for both scenarios (`mrgen bench elastic`
    runs them apart)."""
    run = settings("node_joins_dies")
    figures = _whole(run, reference, node_joins(cluster, run, then_dies=True))
    assert figures["masks_done_at_join"] < figures["masks"], "the job was over before the node joined"
    assert figures["pools_grew_onto_new_node"] == {"generator": True, "filter": True}, figures
    assert figures["generators_on_killed_node"] == 1 and figures["masks_done_at_kill"] < figures["masks"], figures


def test_driver_killed_then_rerun_resumes(cluster, settings, reference):
    run = settings("driver_dies")
    figures = _whole(run, reference, driver_dies(cluster, run))
    done, rerun = figures["masks_done_at_kill"], figures["rerun"]
    assert figures["driver_killed"] and 0 < done < figures["masks"], figures
    assert figures["audit_parts_untouched"] == figures["audit_parts_at_kill"], "the rerun rewrote finished masks"
    assert rerun["already_done"] >= done and rerun["already_done"] + rerun["masks_done"] == figures["masks"], figures
