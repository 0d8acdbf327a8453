"""Hold-out incrementality of the platform's decision log: what each treated group gained
over the randomised universal hold-out, overall, per channel and per intended action. The
statistics (lifts, intervals, clustered standard errors) are `nba.evaluation.stats`'.

The platform's decision log
---------------------------
`log_incrementality` reads what `nba.stores.decisions.read_log` returns and compares each
treated group (`nba`: the arbitration's choice; `explore`: a uniformly random candidate)
with the universal hold-out (`holdout`: chosen by a salted hash of the customer, so it is a
random sample of customers; with `holdout_treatment: none` it is shown nothing).

* Unit and outcome: one decision. A decision *converted* if any outcome reported against it is
  `accepted`; its *value* is the sum of the values reported against it. A hold-out decision shows
  nothing, so the only outcome it can have is one a channel reports against action `do_nothing`:
  the customer did what the action would have asked for (bought, paid, ...) without being asked.
  Channels must report those, or the hold-out's rate is zero by omission and every lift is
  inflated: a hold-out without a single reported outcome, beside treated groups with some, is
  flagged. (`LogFrames.joined()` keeps only the outcome of the first shown action; this module
  counts every outcome of the decision.)
* Variance: clustered by customer, because the hold-out is drawn per customer and a customer's
  decisions are correlated. Hold-out and treated customers are disjoint, so the two arms of a
  comparison are independent.
* Overall and per channel: the channel is known before the experiment layer acts, so each
  channel's treated decisions are compared with that channel's hold-out decisions.
* Per action, honestly: a hold-out decision shows `do_nothing`, so its `action_id` cannot be
  the key. The key is the *intended action*: the action the arbitration picks for the decision
  (the candidate of highest priority among those the "do nothing" threshold kept, ties by the
  order the candidates were logged, which is the catalog's; `do_nothing` when none is left). The
  log records the threshold's verdict: a candidate below it also has a `filtered` row with stage
  `threshold` (`nba.serving`); an explicit `threshold` adds priority > threshold. It is a
  pre-treatment quantity computed the same way in every group, from the candidates the log keeps
  for hold-out decisions too, so "per action" compares customers for whom the platform would
  choose that action, treated (nba) or not (hold-out): an intent-to-treat lift. For `explore`
  decisions the same key measures "a random candidate instead of the intended action" against
  nothing. The intended action of an `nba` decision must be the action it showed: the share for
  which it is (`intended_agreement`) is reported, and below 99 % the per-action figures are
  flagged (a threshold or tie-break other than the one assumed). If the log keeps no candidates
  for hold-out decisions, per-action incrementality is not reported, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.evaluation.stats import (
    DEFAULT_CONFIDENCE,
    ExperimentDataError,
    Incrementality,
    cluster_codes,
    jsonable,
    segmented,
    slug,
)
from nba.records import NO_ACTION

if TYPE_CHECKING:
    import pandas as pd

    from nba.config import EvaluationLimits
    from nba.stores.decisions import LogFrames

INTENDED_AGREEMENT_MIN = 0.99


# --- the platform's decision log -----------------------------------------------------------


HOLDOUT, NBA_GROUP, EXPLORE = "holdout", "nba", "explore"


def decision_outcomes(frames: LogFrames, *, threshold: float | None = None) -> pd.DataFrame:
    """One row per logged decision: its group, channel, shown and intended action, `converted`
    (0/1: an `accepted` outcome reported against the decision, any action) and `value` (the sum
    of the values reported against it). See the module docstring for the definitions."""
    import pandas as pd

    d = frames.decisions
    if len(d) == 0:
        raise ExperimentDataError("the decision log holds no decision")
    cols = ["decision_id", "customer_id", "channel", "experiment_group", "action_id", "probability",
            *(["n_candidates"] if "n_candidates" in d.columns else [])]
    out = d[cols].copy()
    o = frames.outcomes
    if len(o):
        per = pd.DataFrame({"decision_id": o["decision_id"].astype(str),
                            "accepted": (o["outcome"].astype(str) == "accepted").astype(np.int64),
                            "value": o["value"].astype(np.float64)})
        agg = per.groupby("decision_id", sort=False).agg(converted=("accepted", "max"), value=("value", "sum"),
                                                          reported=("accepted", "size"))
        out = out.merge(agg, left_on="decision_id", right_index=True, how="left")
    else:
        out["converted"], out["value"], out["reported"] = 0, 0.0, 0
    out["converted"] = out["converted"].fillna(0).astype(np.int64)
    out["value"] = out["value"].fillna(0.0).astype(np.float64)
    out["reported"] = out["reported"].fillna(0).astype(np.int64)
    out["intended_action"] = intended_actions(frames.candidates, out["decision_id"], filtered=frames.filtered,
                                              threshold=threshold)
    has_cands = set(frames.candidates["decision_id"].astype(str)) if len(frames.candidates) else set()
    out["has_candidates"] = out["decision_id"].astype(str).isin(has_cands)
    return out


def above_threshold(candidates: pd.DataFrame, filtered: pd.DataFrame | None, threshold: float | None = None
                    ) -> np.ndarray:
    """Per candidate row: did the "do nothing" threshold keep it? False where the log has a
    `filtered` row with stage `threshold` for the same decision and action, or (with an explicit
    `threshold`) where its priority is not above it."""
    import pandas as pd

    keep = np.ones(len(candidates), dtype=bool)
    if filtered is not None and len(filtered) and len(candidates):
        below = filtered[filtered["stage"].astype(str) == "threshold"]
        if len(below):
            key = pd.MultiIndex.from_arrays([below["decision_id"].astype(str), below["action_id"].astype(str)])
            cand = pd.MultiIndex.from_arrays([candidates["decision_id"].astype(str),
                                               candidates["action_id"].astype(str)])
            keep &= ~cand.isin(key)
    if threshold is not None and len(candidates):
        keep &= candidates["priority"].astype(np.float64).to_numpy() > threshold
    return keep


def intended_actions(candidates: pd.DataFrame, decision_ids: pd.Series, *, filtered: pd.DataFrame | None = None,
                     threshold: float | None = None, score: str = "priority") -> np.ndarray:
    """The action the arbitration picks per decision: the candidate of highest `score` that the
    threshold kept (`above_threshold`), ties by the order the candidates were logged;
    `do_nothing` without one."""
    import pandas as pd

    ids = decision_ids.astype(str).to_numpy()
    out = np.full(len(ids), NO_ACTION, dtype=object)
    if len(candidates) == 0:
        return out
    c = candidates[["decision_id", "action_id", score]].copy()
    c["decision_id"] = c["decision_id"].astype(str)
    c["_order"] = np.arange(len(c))
    c = c[above_threshold(candidates, filtered, threshold) & c[score].notna().to_numpy()]
    if len(c) == 0:
        return out
    c = c.sort_values(["decision_id", score, "_order"], ascending=[True, False, True], kind="stable")
    best = c.drop_duplicates("decision_id", keep="first")
    winner = pd.Series(best["action_id"].astype(str).to_numpy(), index=best["decision_id"].to_numpy())
    hit = winner.reindex(ids)
    mask = hit.notna().to_numpy()
    out[mask] = hit.to_numpy()[mask]
    return out


@dataclass(frozen=True)
class LogIncrementality:
    """Incrementality of the platform's treated groups over the hold-out, from the decision log."""

    overall: tuple[Incrementality, ...]  # converted, value
    by_channel: tuple[Incrementality, ...]
    by_action: tuple[Incrementality, ...]
    diagnostics: Mapping[str, Any]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        primary = self.overall[0].to_dict()
        return {
            "source": "decision_log",
            "arm_column": "experiment_group",
            "control": HOLDOUT,
            "outcome": primary["outcome"],
            "unit": primary["unit"],
            "confidence": primary["confidence"],
            "control_stats": primary["control_stats"],
            "arms": primary["arms"],
            "outcomes": [r.to_dict() for r in self.overall],
            "segments": [{"by": "channel", **r.to_dict()} for r in self.by_channel]
            + [{"by": "intended_action", **r.to_dict()} for r in self.by_action],
            "diagnostics": {k: jsonable(v) for k, v in self.diagnostics.items()},
            "notes": list(self.notes),
        }

    def values(self, prefix: str = "incrementality") -> dict[str, float]:
        """Flat figures for dashboards: `incrementality.overall.lift` (nba over the hold-out,
        conversion), `incrementality.overall.<group>.<outcome>.lift`, per channel and action."""
        out: dict[str, float] = {}
        for r in self.overall:
            for a in r.arms:
                out[f"{prefix}.overall.{a.arm}.{r.outcome}.lift"] = a.lift
                out[f"{prefix}.overall.{a.arm}.{r.outcome}.relative_lift"] = a.relative_lift
                if a.arm == NBA_GROUP and r.outcome == "converted":
                    out[f"{prefix}.overall.lift"] = a.lift
                    out[f"{prefix}.overall.relative_lift"] = a.relative_lift
                    out[f"{prefix}.overall.p_value"] = a.p_value
        for by, results in (("channel", self.by_channel), ("action", self.by_action)):
            for r in results:
                for a in r.arms:
                    if a.arm == NBA_GROUP:
                        out[f"{prefix}.{by}.{slug(r.segment)}.{r.outcome}.lift"] = a.lift
        return {k: float(v) for k, v in out.items() if v == v}


def log_incrementality(frames: LogFrames, *, threshold: float | None = None, confidence: float = DEFAULT_CONFIDENCE,
                       limits: EvaluationLimits | None = None) -> LogIncrementality:
    """`nba` and `explore` decisions against the hold-out: overall, per channel and per intended
    action, for conversion and value, clustered by customer."""
    frame = decision_outcomes(frames, threshold=threshold)
    groups = frame["experiment_group"].astype(str)
    unknown = sorted(set(groups) - {HOLDOUT, NBA_GROUP, EXPLORE})
    if unknown:
        raise ExperimentDataError(f"decision log: experiment_group value(s) {unknown}; expected holdout, nba, "
                                  "explore")
    arm_labels = [HOLDOUT, NBA_GROUP, EXPLORE]
    present = [g for g in arm_labels if (groups == g).any()]
    if HOLDOUT not in present:
        raise ExperimentDataError(f"decision log: no hold-out decision among {len(frame):,} decisions, so there is "
                                  "no control to measure incrementality against (is experiment.holdout_share 0?)")
    if present == [HOLDOUT]:
        raise ExperimentDataError(f"decision log: all {len(frame):,} decisions are in the hold-out; no treated "
                                  "decision to compare")
    codes = groups.map({g: i for i, g in enumerate(present)}).to_numpy(np.int64)
    clusters = cluster_codes(frame["customer_id"].to_numpy())
    ys = {"converted": frame["converted"].to_numpy(np.float64), "value": frame["value"].to_numpy(np.float64)}

    is_h = (groups == HOLDOUT).to_numpy()
    notes: list[str] = [
        "unit: decision; variance clustered by customer (the hold-out is drawn per customer)",
        "converted: an 'accepted' outcome reported against the decision (hold-out: against do_nothing); "
        "value: the sum of the values reported against it",
    ]
    extra_flags: list[str] = []
    reported_h = int(frame.loc[is_h, "reported"].sum())
    if reported_h == 0 and int(frame.loc[~is_h, "reported"].sum()) > 0:
        extra_flags.append("no outcome was reported against any hold-out decision: a conversion without contact "
                           "must be reported with action_id do_nothing, else the hold-out rate is 0 by omission")
    shown_h = frame.loc[is_h, "action_id"].astype(str) != NO_ACTION
    control_treatment = ("nothing" if not shown_h.any() else "random candidate" if shown_h.all() else "mixed")
    if control_treatment != "nothing":
        notes.append(f"the hold-out was shown {'a random candidate' if control_treatment != 'mixed' else 'an action'} "
                     f"in {float(shown_h.mean()):.1%} of its decisions: the lift is over that, not over nothing")

    def by(seg_codes: np.ndarray, seg_labels: list[str], flags: Sequence[str]) -> tuple[Incrementality, ...]:
        return tuple(_with_flags(r, flags) for r in segmented(
            ys, codes, present, HOLDOUT, seg_codes, seg_labels, clusters=clusters, unit="customer_id",
            confidence=confidence, limits=limits))

    overall = by(np.zeros(len(frame), dtype=np.int64), ["overall"], extra_flags)
    by_channel = by(*_factorize(frame["channel"].astype(str).to_numpy()), extra_flags)

    is_nba = (groups == NBA_GROUP).to_numpy()
    agreement = (float((frame.loc[is_nba, "intended_action"].astype(str)
                        == frame.loc[is_nba, "action_id"].astype(str)).mean()) if is_nba.any() else math.nan)
    # hold-out decisions that had candidates (n_candidates > 0) but whose candidates the log lacks
    h_cands = frame.loc[is_h, "has_candidates"].to_numpy(bool)
    h_should = (frame.loc[is_h, "n_candidates"].to_numpy() > 0) if "n_candidates" in frame else h_cands
    h_missing = int((h_should & ~h_cands).sum())
    by_action: tuple[Incrementality, ...] = ()
    if h_should.any() and h_missing == int(h_should.sum()):
        notes.append("per-action incrementality is not reported: the log keeps no candidates for hold-out "
                     "decisions, so the action the arbitration would have chosen for them is unknown; see the "
                     "overall and per-channel figures")
    else:
        act_flags = list(extra_flags)
        if h_missing:
            act_flags.append(f"{h_missing} hold-out decision(s) with candidates have none in the log: their "
                             "intended action counts as do_nothing")
        if agreement == agreement and agreement < INTENDED_AGREEMENT_MIN:
            act_flags.append(f"the intended action (highest priority kept by the threshold) matches the shown "
                             f"action in only {agreement:.1%} of nba decisions: the threshold or tie-break assumed "
                             "is not the arbitration's")
        by_action = by(*_factorize(frame["intended_action"].astype(str).to_numpy()), act_flags)
        notes.append("per action: by the intended action (the arbitration's pick: highest priority kept by the "
                     "threshold, same rule in every group), an intent-to-treat comparison")
    diagnostics = {
        "decisions": len(frame),
        "customers": int(frame["customer_id"].nunique()),
        **{f"{g}_decisions": int((groups == g).sum()) for g in arm_labels},
        "holdout_outcomes_reported": reported_h,
        "holdout_treatment": control_treatment,
        "holdout_decisions_missing_candidates": h_missing,
        "intended_agreement": agreement,
        "threshold": threshold,
    }
    return LogIncrementality(overall=overall, by_channel=by_channel, by_action=by_action, diagnostics=diagnostics,
                             notes=tuple(notes))


def _with_flags(r: Incrementality, flags: Sequence[str]) -> Incrementality:
    if not flags:
        return r
    from dataclasses import replace

    return replace(r, arms=tuple(replace(a, flags=(*a.flags, *flags)) for a in r.arms))


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]
