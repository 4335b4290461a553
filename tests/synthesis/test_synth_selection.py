"""Selection rules against hand-worked cases (paper appendix B.3 / C.2 and the official code's variant)."""
from __future__ import annotations

import pytest

from mrgen.models.selection import (KEPT, KEPT_RELAXED, KEPT_UNFILTERED, NOT_RANKED, PASSED_NOT_KEPT, REJECTED,
                                    CandidateScores, OrganScore, Thresholds, select, select_unfiltered)


def cand(index: int, *organs: tuple) -> CandidateScores:
    """organs: (iou, conf) or (iou, conf, present)."""
    return CandidateScores(index, [OrganScore(f"o{k}", *o) for k, o in enumerate(organs)])


# Hand-worked: strict thresholds organ IoU .70 / conf .80, means .80 / .90; relaxed .60 / .70 / .70 / .80.
PASS_HI = ((0.95, 0.97), (0.90, 0.95))        # means .925 / .96 → strict pass
PASS_MID = ((0.85, 0.93), (0.82, 0.91))       # means .835 / .92 → strict pass
PASS_LOW = ((0.81, 0.92), (0.80, 0.90))       # means .805 / .91 → strict pass
ORGAN_FAIL = ((0.99, 0.99), (0.69, 0.99))     # one organ IoU .69 < .70 (means .84 / .99) → strict fail; relaxed pass
MEAN_FAIL = ((0.75, 0.95), (0.75, 0.95))      # organs ok, mean IoU .75 < .80 → strict fail; relaxed pass
CONF_FAIL = ((0.90, 0.85), (0.90, 0.85))      # mean conf .85 < .90 → strict fail; relaxed pass (.85 >= .80)
RELAX_BEST = ((0.78, 0.88), (0.78, 0.88))     # means .78 / .88 → strict fail; relaxed pass, better than MEAN_FAIL
HOPELESS = ((0.30, 0.55), (0.10, 0.50))       # fails even relaxed
RELAX_EDGE = ((0.60, 0.70), (0.80, 0.90))     # means .70 / .80: exactly at every relaxed threshold → relaxed pass

PAPER_CASES = [
    # (name, candidates, keep, expected kept (best first), relaxed, expected fates)
    ("two best of three passing", [cand(0, *PASS_LOW), cand(1, *PASS_HI), cand(2, *PASS_MID), cand(3, *HOPELESS)], 2,
     [1, 2], False, {0: PASSED_NOT_KEPT, 1: KEPT, 2: KEPT, 3: REJECTED}),
    ("one passes: keep it only, no relaxation", [cand(0, *ORGAN_FAIL), cand(1, *PASS_LOW), cand(2, *MEAN_FAIL)], 2,
     [1], False, {0: REJECTED, 1: KEPT, 2: REJECTED}),
    ("none strict: relax and keep the single best", [cand(0, *MEAN_FAIL), cand(1, *HOPELESS), cand(2, *RELAX_BEST),
                                                     cand(3, *CONF_FAIL)], 2,
     [3], True, {0: REJECTED, 1: REJECTED, 2: REJECTED, 3: KEPT_RELAXED}),
    ("relaxed thresholds are inclusive", [cand(0, *RELAX_EDGE), cand(1, *HOPELESS)], 2, [0], True,
     {0: KEPT_RELAXED, 1: REJECTED}),
    ("nothing even relaxed: nothing kept", [cand(0, *HOPELESS), cand(1, (0.5, 0.9), (0.9, 0.9))], 2, [], False,
     {0: REJECTED, 1: REJECTED}),
    ("absent organ fails the paper rule", [cand(0, (0.95, 0.97), (0.0, 0.0, False)), cand(1, *PASS_LOW)], 2, [1], False,
     {0: REJECTED, 1: KEPT}),
    ("ties broken by confidence then index", [cand(0, (0.9, 0.92), (0.9, 0.92)), cand(1, (0.9, 0.95), (0.9, 0.95)),
                                              cand(2, (0.9, 0.95), (0.9, 0.95))], 2,
     [1, 2], False, {0: PASSED_NOT_KEPT, 1: KEPT, 2: KEPT}),
]


def test_strict_organ_conf_threshold_applies_per_organ():
    # means pass (.90 / .91) but one organ's confidence .79 < .80
    c = cand(0, (0.9, 0.79), (0.9, 0.99), (0.9, 0.95))
    assert not c.passes(Thresholds())
    assert c.passes(Thresholds().relaxed())


def test_official_rule_top5_and_absent_organs():
    # Six candidates ranked by mean IoU; the only strict pass under the official rule (index 5, absent organ
    # ignored: means .95 / .96) is ranked 1st; the 6th-ranked (index 0) would pass but is never considered.
    cands = [
        cand(0, *PASS_LOW),                               # mean IoU .805: rank 6 → not ranked
        cand(1, *MEAN_FAIL),                              # .75 → rank 7 → not ranked
        cand(2, (0.9, 0.85), (0.9, 0.85)),                # .90 conf .85 → rank 3, fails strict conf
        cand(3, (0.92, 0.5), (0.9, 0.5)),                 # .91 → rank 2, fails conf
        cand(4, (0.88, 0.6), (0.88, 0.6)),                # .88 → rank 4, fails
        cand(5, (0.95, 0.96), (0.0, 0.0, False)),         # official: absent ignored → .95 / .96 → rank 1, passes
        cand(6, (0.86, 0.6), (0.85, 0.6)),                # .855 → rank 5, fails
    ]
    official = select(cands, keep=2, rule="official")
    assert official.kept == [5]
    assert official.relaxed is False
    assert official.fates[0] == NOT_RANKED and official.fates[1] == NOT_RANKED
    assert official.fates[2] == REJECTED
    # The paper rule counts the absent organ as failing (mean IoU .475) and ranks everything: 0 is kept.
    paper = select(cands, keep=2, rule="paper")
    assert paper.kept == [0]


def test_official_rule_relaxes_within_top5_only():
    cands = [cand(i, (0.5, 0.5), (0.5, 0.5)) for i in range(5)] + [cand(9, *RELAX_BEST)]
    # RELAX_BEST has the highest mean IoU (.78) → inside the top 5 → kept relaxed
    sel = select(cands, keep=2, rule="official")
    assert sel.kept == [9] and sel.relaxed
    # with top_k=1 and a better-ranked hopeless candidate, the relaxable one is outside the window
    cands2 = [cand(0, (0.79, 0.1), (0.79, 0.1)), cand(1, *RELAX_BEST)]
    sel2 = select(cands2, keep=2, rule="official", top_k=1)
    assert sel2.kept == [] and sel2.fates == {0: REJECTED, 1: NOT_RANKED}


def test_unfiltered_and_bad_arguments():
    sel = select_unfiltered(range(4), keep=2)
    assert sel.kept == [0, 1] and sel.fates[0] == KEPT_UNFILTERED and sel.fates[3] == REJECTED
    with pytest.raises(ValueError, match="unknown selection rule"):
        select([], rule="best")
    with pytest.raises(ValueError, match="keep"):
        select([], keep=0)


# The release's filter_json: top 5 by mean IoU (stable: ties keep candidate order), zeros skipped, relax when FEWER
# THAN 2 of the top 5 pass strictly and then keep only the single best passing the relaxed thresholds.
CONF_LOW = ((0.92, 0.86), (0.90, 0.84))       # means .91 / .85: strict fail (mean conf), relaxed pass
OFFICIAL_CASES = [
    # (name, candidates, keep, expected kept, relaxed, expected fates)
    ("two pass: the best keep of them", [cand(0, *PASS_LOW), cand(1, *HOPELESS), cand(2, *PASS_HI), cand(3, *PASS_MID)],
     2, [2, 3], False, {0: PASSED_NOT_KEPT, 1: REJECTED, 2: KEPT, 3: KEPT}),
    ("exactly one passes: relaxed round, a better-ranked relaxed pass wins", [cand(0, *PASS_LOW), cand(1, *CONF_LOW)],
     2, [1], True, {0: PASSED_NOT_KEPT, 1: KEPT_RELAXED}),
    ("exactly one passes and ranks first: kept, only one", [cand(0, *PASS_HI), cand(1, *CONF_LOW), cand(2, *HOPELESS)],
     2, [0], False, {0: KEPT, 1: REJECTED, 2: REJECTED}),
    ("none strict: the single best relaxed", [cand(0, *MEAN_FAIL), cand(1, *RELAX_BEST), cand(2, *HOPELESS)], 2,
     [1], True, {0: REJECTED, 1: KEPT_RELAXED, 2: REJECTED}),
    ("nothing even relaxed", [cand(0, *HOPELESS)], 2, [], False, {0: REJECTED}),
    ("an IoU of 0 is skipped in checks and mean, its confidence still counts",
     [cand(0, (0.0, 0.95), (0.90, 0.95)), cand(1, (0.0, 0.50), (0.95, 0.95)), cand(2, *PASS_LOW)], 2,
     [0, 2], False, {0: KEPT, 1: REJECTED, 2: KEPT}),
    ("ties keep candidate order (confidence is no tie-break)", [cand(0, (0.9, 0.91), (0.9, 0.91)),
                                                                cand(1, (0.9, 0.99), (0.9, 0.99))], 1,
     [0], False, {0: KEPT, 1: PASSED_NOT_KEPT}),
    ("every IoU 0: no mean, fails and ranks last", [cand(0, (0.0, 0.99)), cand(1, *PASS_LOW), cand(2, *PASS_MID)], 2,
     [2, 1], False, {0: REJECTED, 1: KEPT, 2: KEPT}),
]


TABLE = [("paper", *case) for case in PAPER_CASES] + [("official", *case) for case in OFFICIAL_CASES]


@pytest.mark.parametrize("rule,name,candidates,keep,kept,relaxed,fates", TABLE, ids=[f"{c[0]}: {c[1]}" for c in TABLE])
def test_rule_table(rule, name, candidates, keep, kept, relaxed, fates):
    sel = select(candidates, keep=keep, rule=rule)
    assert sel.kept == kept
    assert sel.relaxed is relaxed
    assert sel.fates == fates


def test_official_means_skip_zeros_as_the_release_does():
    c = cand(0, (0.0, 0.9), (0.8, 0.7), (0.0, 0.0, False))
    assert c.mean_iou("official") == pytest.approx(0.8)       # mean of the non-zero IoUs
    assert c.mean_conf("official") == pytest.approx(0.8)      # mean of the non-zero confidences
    assert c.mean_iou("paper") == pytest.approx(0.8 / 3)
    # the exactly-one case under the paper rule keeps the strict passer, no relaxation
    assert select([cand(0, *PASS_LOW), cand(1, *CONF_LOW)], keep=2, rule="paper").kept == [0]
