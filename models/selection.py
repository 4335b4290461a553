"""Choosing which generated candidates of one mask to keep (paper §3.5, appendix B.3 and C.2).

Every candidate carries per-organ scores from the SAM2 filter: the IoU of SAM2's segmentation with the organ's
condition mask and SAM2's own confidence (its predicted IoU). A candidate *passes* thresholds ``t`` when

* every organ has ``iou >= t.organ_iou`` and ``conf >= t.organ_conf`` (τ_IoU = 0.70, τ_conf = 0.80), and
* the means over organs reach ``t.mean_iou`` and ``t.mean_conf`` (τ̄_IoU = 0.80, τ̄_conf = 0.90).

Two rules are offered:

``paper`` (default; appendix B.3): among all candidates, keep the best ``keep`` that pass the strict thresholds,
ranked by mean IoU. Only when *none* passes are all four thresholds relaxed by 0.10; then the single best
candidate passing the relaxed ones is kept (flagged ``relaxed``). Otherwise nothing is kept. Organs named by
the slice but absent from its mask count as failing (IoU and confidence 0): "∀ i" covers every organ.

``official`` (the release's ``filter_json``, line for line): candidates are ranked by mean IoU (a stable sort:
ties keep candidate order) and only the top 5 are considered. An IoU of 0 is skipped in the IoU checks and the
mean IoU, a confidence of 0 in the confidence checks and mean (an organ absent from the slice scores 0 / 0, so it
is skipped in both; an organ SAM2 misses entirely keeps only its confidence). When at least 2 of the top 5 pass the
strict thresholds the best ``keep`` of them are kept; when FEWER THAN 2 pass (one included), every threshold drops
by 0.10 and only the single best of the top 5 passing those is kept (flagged relaxed unless it also passed
strictly). One deliberate difference: a candidate whose every IoU is 0 has no mean IoU (the release's NaN, which
its comparisons let through and its sort leaves in an undefined place); here it fails and ranks last.

Paper-rule ties are broken by mean confidence, then by the lower candidate index, so the choice is deterministic.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import Field

from mrgen.platform import storage
from mrgen.platform.config import ConfigBase, ConfigError

RULES = ("paper", "official")

# A candidate's fate, recorded in the audit table.
KEPT = "kept"                      # passed the strict thresholds, among the best `keep`
KEPT_RELAXED = "kept_relaxed"      # nothing passed strictly; best under thresholds relaxed by 0.10
KEPT_UNFILTERED = "kept_unfiltered"  # no filter: the first `keep` candidates
PASSED_NOT_KEPT = "passed_not_kept"  # passed, but `keep` better ones were kept
REJECTED = "rejected"              # failed the thresholds in force
NOT_RANKED = "not_ranked"          # official rule: outside the top 5 by mean IoU
STOPPED_EARLY = "stopped_early"    # early rejection: its x̂₀ scored below the cut mid-sampling; never finished
KEPT_FATES = (KEPT, KEPT_RELAXED, KEPT_UNFILTERED)
STRICT_FATES = (KEPT, PASSED_NOT_KEPT)  # passed the strict thresholds
_EPS = 1e-9  # thresholds are inclusive; absorbs float rounding of relaxed thresholds and means


@dataclass(frozen=True)
class Thresholds:
    organ_iou: float = 0.70
    organ_conf: float = 0.80
    mean_iou: float = 0.80
    mean_conf: float = 0.90

    def relaxed(self, by: float = 0.10) -> Thresholds:
        return Thresholds(*(round(v - by, 9) for v in (self.organ_iou, self.organ_conf, self.mean_iou, self.mean_conf)))


class ThresholdConfig(ConfigBase):
    """The thresholds as configuration (`mrgen synthesize` and the serve filter both declare theirs with this)."""

    organ_iou: float = Field(0.70, ge=0, le=1, description="τ_IoU: every organ's IoU at least this")
    organ_conf: float = Field(0.80, ge=0, le=1, description="τ_conf: every organ's SAM2 confidence at least this")
    mean_iou: float = Field(0.80, ge=0, le=1, description="τ̄_IoU: mean IoU over organs at least this")
    mean_conf: float = Field(0.90, ge=0, le=1, description="τ̄_conf: mean confidence over organs at least this")
    relax_by: float = Field(0.10, ge=0, le=1, description="all thresholds lowered by this when no candidate passes")

    def thresholds(self) -> Thresholds:
        return Thresholds(self.organ_iou, self.organ_conf, self.mean_iou, self.mean_conf)


class FilterCalibration(ConfigBase):
    """What `mrgen filter calibrate` writes: thresholds set from a scorer's scores of real slices against their own
    masks (each at the ``quantile`` of its distribution), and those distributions."""

    scorer: str = Field(description="the scorer calibrated (sam2 / medsam)")
    scorer_id: str = Field(description="its model id, as outputs record the filter")
    db: str = Field(description="MRGen-DB whose annotated slices were scored")
    filters: dict = Field(default_factory=dict, description="the DB selection scored")
    slices: int = Field(ge=1, description="real slices scored")
    quantile: float = Field(gt=0, lt=1, description="each threshold is this quantile of its real-slice distribution")
    thresholds: ThresholdConfig = Field(description="the calibrated thresholds (relax_by kept from the default)")
    distributions: dict = Field(default_factory=dict, description="per organ and overall: quantiles of IoU and "
                                                                   "confidence on the real slices")


def calibrated_thresholds(uri: str, scorer: str) -> Thresholds:
    """The thresholds of a `mrgen filter calibrate` file, after checking it was calibrated for ``scorer``
    (OSError / ValueError saying what is wrong otherwise)."""
    calibration = load_calibration(uri)
    if calibration.scorer != scorer:
        raise ValueError(f"was calibrated for the {calibration.scorer} scorer, not {scorer!r}")
    return calibration.thresholds


def load_calibration(uri: str) -> FilterCalibration:
    """A calibration file (JSON) from any URI; a bad one raises ValueError naming the field."""
    try:
        data = storage.read_json(uri)
    except ValueError as exc:
        raise ValueError(f"not a calibration file ({exc})") from None
    try:
        return FilterCalibration.load_dict(data, source=uri)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


@dataclass
class OrganScore:
    organ: str
    iou: float
    conf: float
    present: bool = True  # False: the organ is named for the slice but has no pixels in its mask


@dataclass
class CandidateScores:
    index: int
    organs: list[OrganScore] = field(default_factory=list)

    def counted(self, rule: str) -> list[OrganScore]:
        """The organs a rule's IoU checks look at: all of them, absent ones at 0 (paper), or those with a non-zero
        IoU (official)."""
        if rule == "official":
            return [o for o in self.organs if o.iou != 0]
        return [OrganScore(o.organ, o.iou if o.present else 0.0, o.conf if o.present else 0.0, o.present)
                for o in self.organs]

    def values(self, rule: str, kind: str) -> list[float]:
        """The ``iou`` or ``conf`` values a rule checks and averages (official: the non-zero ones)."""
        if rule == "official":
            return [getattr(o, kind) for o in self.organs if getattr(o, kind) != 0]
        return [getattr(o, kind) for o in self.counted(rule)]

    def mean_iou(self, rule: str = "paper") -> float:
        return _mean(self.values(rule, "iou"))

    def mean_conf(self, rule: str = "paper") -> float:
        return _mean(self.values(rule, "conf"))

    def probe_iou(self, rule: str = "paper") -> float:
        """Early rejection's figure for a predicted clean image: its mean IoU, 0 where no organ is found."""
        value = self.mean_iou(rule)
        return 0.0 if math.isnan(value) else float(value)

    def passes(self, t: Thresholds, rule: str = "paper") -> bool:
        ious, confs = self.values(rule, "iou"), self.values(rule, "conf")
        if not ious or not confs:
            return False
        ok = lambda value, threshold: value >= threshold - _EPS  # noqa: E731  (0.6 + 0.8) / 2 must reach 0.7
        return (all(ok(v, t.organ_iou) for v in ious) and all(ok(v, t.organ_conf) for v in confs)
                and ok(_mean(ious), t.mean_iou) and ok(_mean(confs), t.mean_conf))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class Selection:
    kept: list[int]            # candidate indices, best first
    relaxed: bool              # the kept one came from the relaxed thresholds
    fates: dict[int, str]      # candidate index → fate


OFFICIAL_MIN_PASSING = 2  # the release relaxes when fewer than this many of its top 5 pass


def _rank_key(c: CandidateScores, rule: str) -> tuple[float, float, int]:
    mi, mc = c.mean_iou(rule), c.mean_conf(rule)
    if rule == "official":  # mean IoU only, then candidate order (the release's stable sort)
        mc = 0.0
    return (-(mi if not math.isnan(mi) else -1.0), -(mc if not math.isnan(mc) else -1.0), c.index)


def select(candidates: Sequence[CandidateScores], keep: int = 2, rule: str = "paper",
           thresholds: Thresholds = Thresholds(), relax_by: float = 0.10, top_k: int = 5) -> Selection:
    """Apply ``rule`` to one mask's candidates; see the module docstring."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}: choose from {RULES}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    ranked = sorted(candidates, key=lambda c: _rank_key(c, rule))
    fates = {c.index: REJECTED for c in candidates}
    if rule == "official":
        for c in ranked[top_k:]:
            fates[c.index] = NOT_RANKED
        ranked = ranked[:top_k]
    strict = [c for c in ranked if c.passes(thresholds, rule)]
    if rule == "official" and len(strict) < OFFICIAL_MIN_PASSING:
        return _relax_official(ranked, strict, thresholds.relaxed(relax_by), fates)
    if strict:
        kept = [c.index for c in strict[:keep]]
        for c in strict:
            fates[c.index] = KEPT if c.index in kept else PASSED_NOT_KEPT
        return Selection(kept=kept, relaxed=False, fates=fates)
    loose = [c for c in ranked if c.passes(thresholds.relaxed(relax_by), rule)]
    if loose:
        fates[loose[0].index] = KEPT_RELAXED
        return Selection(kept=[loose[0].index], relaxed=True, fates=fates)
    return Selection(kept=[], relaxed=False, fates=fates)


def _relax_official(ranked: list[CandidateScores], strict: list[CandidateScores], relaxed: Thresholds,
                    fates: dict[int, str]) -> Selection:
    """The release's second round: thresholds lowered, the single best of the top 5 passing them kept."""
    for c in strict:
        fates[c.index] = PASSED_NOT_KEPT
    loose = [c for c in ranked if c.passes(relaxed, "official")]
    if not loose:
        return Selection(kept=[], relaxed=False, fates=fates)
    best, strict_ids = loose[0].index, {c.index for c in strict}
    fates[best] = KEPT if best in strict_ids else KEPT_RELAXED
    return Selection(kept=[best], relaxed=best not in strict_ids, fates=fates)


def select_unfiltered(indices: Sequence[int], keep: int) -> Selection:
    """No filter (``--filter none``): the first ``keep`` candidates by index."""
    order = sorted(indices)
    kept = order[:keep]
    return Selection(kept=kept, relaxed=False, fates={i: KEPT_UNFILTERED if i in kept else REJECTED for i in order})


def strict_passes(candidates: Sequence[CandidateScores], rule: str = "paper",
                  thresholds: Thresholds = Thresholds()) -> int:
    """How many candidates pass the strict thresholds (the adaptive budget stops at ``keep``)."""
    return sum(c.passes(thresholds, rule) for c in candidates)
