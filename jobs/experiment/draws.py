"""Training sets drawn from the candidates of one synthesis run, to judge the filter (issue: the filter at equal
count).

The filtered run scores ``n`` candidates of each mask and keeps ``k`` of them (``k`` may be 0). The unfiltered run
generates the same ``n`` candidates (same seeds, no filter, all kept) into its own DB. From it:

* ``equal_count``: for each mask, the first ``k`` of the same ``n`` candidates, chosen without scores: the same
  number of slices from the same masks and candidates as the filtered set, so filtered − unfiltered is the
  filter's choice alone;
* ``best`` / ``worst``: each mask's best- and worst-ranked candidate (masks with two or more candidates): whether a
  candidate's filter score predicts its value as training data, at equal count and over the same masks.

Scores come from the filtered run's audit, matched by (mask key, candidate index).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from mrgen.models.selection import KEPT_FATES
from mrgen.platform import storage

DRAWS = ("equal_count", "best", "worst")
DRAWS_FILE = "draws.json"  # in the unfiltered run's folder


def write_draws(draws: dict[str, list[str]], folder: str) -> None:
    storage.write_text(storage.join(folder, DRAWS_FILE), json.dumps(draws, indent=0))


def load_draws(folder: str) -> dict[str, list[str]]:
    """The unfiltered run's drawn training sets: draw name → slice ids."""
    return json.loads(storage.read_text(storage.join(folder, DRAWS_FILE)))


def rank_key(row: Mapping[str, Any]) -> tuple:
    """The paper rule's order (mean IoU, then mean confidence, then the lower index); a candidate without scores
    ranks last."""
    def high_first(value: float | None) -> float:
        return -value if value is not None and not math.isnan(value) else math.inf

    return high_first(row.get("mean_iou")), high_first(row.get("mean_conf")), row["candidate_index"]


def draw_training_sets(audit: Iterable[Mapping[str, Any]], candidates: Iterable[Mapping[str, Any]]
                       ) -> dict[str, list[str]]:
    """``audit``: the filtered run's audit rows (mask_key, candidate_index, fate, mean_iou, mean_conf,
    skip_reason); ``candidates``: the unfiltered run's rows (mask_key, candidate_index, slice_id). Returns draw
    name → slice ids of the unfiltered DB, in mask order."""
    slice_of = {(r["mask_key"], int(r["candidate_index"])): r["slice_id"] for r in candidates}
    scored: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in audit:
        if not row.get("skip_reason") and row.get("candidate_index") is not None:
            scored[row["mask_key"]].append(row)
    draws: dict[str, list[str]] = {name: [] for name in DRAWS}
    for mask in sorted(scored):
        rows = scored[mask]
        missing = [r["candidate_index"] for r in rows if (mask, int(r["candidate_index"])) not in slice_of]
        if missing:
            raise ValueError(f"mask {mask}: candidates {missing} of the filtered run are not in the unfiltered run "
                             "(it must generate the same candidates: same masks, seeds and candidate count)")
        kept = sum(r["fate"] in KEPT_FATES for r in rows)
        by_index = sorted(int(r["candidate_index"]) for r in rows)
        draws["equal_count"] += [slice_of[(mask, i)] for i in by_index[:kept]]
        ranked = sorted(rows, key=rank_key)
        if len(ranked) >= 2 and rank_key(ranked[0])[0] != math.inf:  # unscored ones rank last, as in selection
            draws["best"].append(slice_of[(mask, int(ranked[0]["candidate_index"]))])
            draws["worst"].append(slice_of[(mask, int(ranked[-1]["candidate_index"]))])
    return draws
