"""The closed loop on the simulated bank: `nba simulate loop --customers N --months M --seed S`.

Month by month:

1. the bank (`nba.data.simulator`, stepped one month at a time through its `decider` hook)
   draws who gets an outbound decision this month, on which channel and when;
2. the platform decides for them through the engine's own batch path (`DecisionEngine.run_core`
   over the bundle's catalog, policies, models, contact-policy store, hold-out and
   exploration), logs every decision (a batch segment of the decision log, indexed so
   `/respond` finds it) and counts the shown actions as contacts;
3. the bank answers every shown action from its ground truth (accepted with the true
   P(convert | contacted), else rejected or ignored; effects on holdings, stress, churn);
4. each answer goes through `DecisionEngine.respond` (the outcome path of `/respond`: the log,
   the cool-down after a rejection);
5. the month is evaluated: for the platform's policy (greedy on its logged priorities), the
   bank's legacy campaign policy (softmax of the true logits among the platform's candidates),
   "do nothing", random (uniform among the candidates) and the oracle (the candidate of highest
   true P x V): the true value per decided customer from the truth, and the off-policy
   estimate of each from the log (IPS, SNIPS, DR, with CIs), and whether the CI covers the
   truth;
6. the propensity models are retrained on the whole decision log (`nba.training.logged`:
   inverse logging-probability weights), the promotion gates decide, and the bundle is rebuilt
   when a champion moved; the next month decides with it.

Value here is what the shown action earns when accepted (the reward the log records: the
action's value, for the mortgage 4 % of income): the quantity every policy is compared on, and
the one the OPE estimates. Channel costs and organic conversions are outside it.

The history the first models are trained on is a standard simulation of the same bank
(same seed: the same customers) under the legacy policy (`bootstrap`); the loop then starts at
the end of that history with empty contact state.

The loop decides with its own copy of the strategy (`<work>/loop_home/serving`, beside
symlinks to the project's features/, training/ and evaluation/), so that it can change the
catalog mid-run without touching the project's files:

* uplift models the priority formula does not read are left out of it: the bundle never
  serves them, the loop's retraining only learns propensity, and on a bank of 20,000 the
  legacy history's exploration rows hold too few control conversions to train several of them
  (7 control positives for rewards_card where 10 are needed): the first run of the 20,000 x 6
  benchmark stopped there, before month 1, for a model nothing reads. A formula that reads
  uplift keeps them (and then needs a bank big enough to train them);
* `LoopConfig.new_action` withholds an action until month `new_action_month`: it then joins
  the catalog with no history and no model (`cold_start: true`), is scored from the pooled
  prior and explored by Thompson sampling (`nba.decisioning.coldstart`), and gets a model
  trained on the log once it has `cold_start.mature_positives` accepted outcomes and the
  gates pass it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from nba.errors import ConfigError
from nba.settings import Settings

logger = logging.getLogger(__name__)

POLICIES = ("platform", "legacy", "none", "random", "oracle")
ESTIMATORS = ("ips", "snips", "dr")
PRIMARY = "dr"
Z95 = 1.959963984540054


@dataclass(frozen=True)
class LoopConfig:
    """What to run. `history_months` of legacy history train the first models."""

    customers: int = 20_000
    months: int = 6
    seed: int = 7
    history_months: int = 12
    contact_rate: float = 0.3
    ips_clip: float = 20.0
    retrain: bool = True
    start: date = date(2025, 1, 1)
    new_action: str | None = None  # withheld from the catalog until `new_action_month`, then cold
    new_action_month: int = 3

    def __post_init__(self) -> None:
        for name, low in (("customers", 100), ("months", 1), ("history_months", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"loop {name} = {v!r}: expected an integer >= {low}")
        if not 0 < self.contact_rate <= 1:
            raise ConfigError(f"loop contact_rate = {self.contact_rate!r}: expected a share in (0, 1]")
        if not self.ips_clip >= 1:
            raise ConfigError(f"loop ips_clip = {self.ips_clip!r}: expected a number >= 1")
        if self.new_action is not None:
            from nba.schemas import ACTIONS

            if self.new_action not in ACTIONS:
                raise ConfigError(f"loop new_action = {self.new_action!r}: expected an action of the simulator "
                                  f"({', '.join(ACTIONS)})")
            m = self.new_action_month
            if isinstance(m, bool) or not isinstance(m, int) or not 2 <= m <= self.months:
                raise ConfigError(f"loop new_action_month = {m!r}: expected a month from 2 to {self.months}")

    @property
    def loop_start(self) -> date:
        m = self.start.month - 1 + self.history_months
        return date(self.start.year + m // 12, m % 12 + 1, 1)


@dataclass
class MonthReport:
    month: int
    start: str
    decisions: int
    shown: int
    accepted: int
    truth: dict[str, float]  # policy -> true value per decided customer
    ope: dict[str, dict[str, dict[str, Any]]]  # policy -> estimator -> {value, ci_low, ci_high, covers, ...}
    platform_vs_legacy: dict[str, float]  # mean, ci_low, ci_high (truth, paired per customer)
    oracle_gain_captured: float  # (platform - none) / (oracle - none)
    retrain: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # per action served cold this month: shown, accepted, the true mean P(accept) of the customers
    # it was shown to, the posterior (mean, alpha, beta) it was scored with, the logged probabilities
    cold_start: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LoopReport:
    config: dict[str, Any]
    months: list[MonthReport]
    seconds: dict[str, float]

    def coverage(self, estimator: str = PRIMARY) -> float:
        cells = [m.ope[p][estimator]["covers"] for m in self.months for p in POLICIES
                 if p in m.ope and m.ope[p][estimator]["covers"] is not None]
        return float(np.mean(cells)) if cells else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "seconds": self.seconds,
                "coverage": {e: self.coverage(e) for e in ESTIMATORS},
                "months": [asdict(m) for m in self.months]}

    def describe(self) -> str:
        lines = [f"{'month':<8}" + "".join(f"{p:>10}" for p in POLICIES)
                 + f"{'plat-leg':>10}{'95% CI':>20}{'captured':>10}"]
        for m in self.months:
            d = m.platform_vs_legacy
            ci = f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
            lines.append(f"{m.start:<8}" + "".join(f"{m.truth[p]:>10.3f}" for p in POLICIES)
                         + f"{d['mean']:>10.3f}{ci:>20}"
                         + f"{m.oracle_gain_captured:>10.1%}")
        lines.append("true value per decided customer (euros of accepted value); OPE interval coverage of the "
                     "truth: " + ", ".join(f"{e} {self.coverage(e):.0%}" for e in ESTIMATORS))
        for m in self.months:
            for a, c in m.cold_start.items():
                lines.append(f"{m.start} cold start {a}: {c['candidates']:,} candidates, shown {c['shown']:,} "
                             f"({c['shown_by_thompson']:,} by Thompson sampling), accepted {c.get('accepted', 0):,}; "
                             f"scored at the posterior mean {c['posterior_mean']:.4f} (Beta({c['alpha']:.1f}, "
                             f"{c['beta']:.1f})); true mean P of the customers shown {c['true_mean_p_shown']:.4f}")
        return "\n".join(lines)


# --- the bank's side ----------------------------------------------------------------------


class _NullSink:
    """The loop keeps no simulator tables: the platform's log is the record."""

    rows: dict[str, int] = {}

    def add(self, name: str, frame: Any) -> None:
        return None


def _true_values(run: Any, pick: np.ndarray) -> np.ndarray:
    """(simulator actions, rows): what each action earns when accepted (as the bank books it)."""
    from nba.data.simulator import ACTION_VALUE, MORTGAGE

    v = np.repeat(ACTION_VALUE[:, None].astype(np.float64), len(pick), axis=1)
    v[MORTGAGE] = np.round(ACTION_VALUE[MORTGAGE] * run.income[pick], 2)
    return v


def _stored_columns(run: Any, names: tuple[str, ...], f: dict[str, np.ndarray], pick: np.ndarray,
                    streaming: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The feature service's stored features of the picked customers, as the snapshot tables
    would hold them (RFM scored over the month's active customers, as the simulator does)."""
    import pandas as pd

    from nba.data.rfm import score_rfm
    from nba.data.simulator import REGIONS

    out: dict[str, Any] = {}
    need_rfm = any(n in ("r_score", "f_score", "m_score", "rfm_segment") for n in names)
    if need_rfm:
        active = np.flatnonzero(run.active)
        frame = pd.DataFrame({"customer_id": active + 1, **{c: f[c][active].astype(np.float64) for c in
                                                            ("recency_days", "frequency", "monetary", "tenure_days")}})
        scored = score_rfm(frame)
        at = np.searchsorted(active, pick)
        rfm = {c: scored[c].to_numpy()[at] for c in ("r_score", "f_score", "m_score", "rfm_segment")}
    for name in names:
        if name == "income":
            out[name] = run.income[pick].astype(np.float64)
        elif name == "region":
            out[name] = np.asarray(REGIONS, dtype=object)[run.region[pick]]
        elif need_rfm and name in rfm:
            v = rfm[name]
            out[name] = v.astype(object) if name == "rfm_segment" else v.astype(np.float64)
        elif name in f:
            out[name] = np.asarray(f[name][pick], dtype=np.float64)
        elif streaming is not None and name in streaming:  # fed by events, which this bank does not send
            kind = streaming[name]
            out[name] = (np.array([[] for _ in pick] + [None], dtype=object)[:-1] if kind == "list" else
                         np.full(len(pick), "", dtype=object) if kind == "string" else np.zeros(len(pick)))
        else:
            raise ConfigError(f"the loop cannot give feature '{name}': the simulator has no such column")
    return out


# --- the loop -----------------------------------------------------------------------------


class ClosedLoop:
    """The platform and the bank, month by month (see the module docstring)."""

    def _streaming_kinds(self) -> dict[str, str]:
        """The stored features fed by behavioural events (the realtime view): their kind."""
        reader = self.engine.features
        kinds = {f.name: f.kind for f in reader.fields}
        kinds.update({n: "list" for n in reader.list_names})
        return {n: kinds.get(n, "number") for v in reader.views if v.from_events for n in v.features}

    def __init__(self, settings: Settings, config: LoopConfig, *, echo: Callable[[str], None] | None = None,
                 on_month: Callable[[ClosedLoop, int], None] | None = None):
        self.settings = settings
        self.config = config
        self.echo = echo or (lambda s: logger.info(s))
        self.on_month = on_month  # called after each month's outcomes (e.g. to add an action)
        self.engine: Any = None
        self._source_home: Path | None = None
        self.strategy_notes: list[str] = []
        self._month_ctx: dict[str, Any] = {}
        self.truth_of: dict[str, float] = {}  # decision id -> true P(accept) of its shown action
        self._calls = 0  # decider calls so far (each call's decision ids are seeded by it)

    # --- set-up ---------------------------------------------------------------------------

    def bootstrap(self) -> dict[str, str]:
        """Simulate the bank's legacy history, register the feature repository, train and
        promote every model the loop's catalog reads, build the bundle."""
        from nba.data.simulator import simulate_to_dir
        from nba.features import store
        from nba.serving.bundle import build

        cfg = self.config
        self._use_own_strategy(withhold=self._withheld(0))
        simulate_to_dir(customers=cfg.customers, seed=cfg.seed, out_dir=self.settings.sim_dir,
                        months=cfg.history_months, progress=False)
        store.apply(self.settings)
        champions = train_catalog_models(self.settings)
        build(self.settings)
        return champions

    def _withheld(self, k: int) -> tuple[str, ...]:
        """The actions not yet in the catalog in (0-based) month k."""
        cfg = self.config
        return (cfg.new_action,) if cfg.new_action is not None and k < cfg.new_action_month - 1 else ()

    def _use_own_strategy(self, *, withhold: tuple[str, ...] = (), cold: tuple[str, ...] = ()) -> None:
        """Decide with the loop's own copy of the strategy (see the module docstring)."""
        if self._source_home is None:
            self._source_home = self.settings.home
        self.settings, self.strategy_notes = strategy_copy(self.settings, self._source_home, withhold=withhold,
                                                           cold=cold)

    def _add_new_action(self) -> None:
        """The withheld action joins the catalog with no history: no model (a @champion its
        model may have from elsewhere is taken off), cold start; the bundle is rebuilt."""
        from nba.serving.bundle import build
        from nba.training import tracking

        action = self.config.new_action
        assert action is not None
        from nba.catalog import read_files

        self._use_own_strategy(cold=(action,))
        client = tracking.configure(self.settings)
        name = next(a.model for a in read_files(self.settings.home)[0].actions if a.id == action)
        try:
            client.get_model_version_by_alias(name, "champion")
        except Exception:  # no such model, or no champion: nothing to take off
            pass
        else:
            client.delete_registered_model_alias(name, "champion")
            self.echo(f"    {action}: its model's @champion (trained elsewhere) taken off: the action starts cold")
        build(self.settings)
        self._load_engine()

    def _load_engine(self) -> None:
        from nba.serving.bundle import load_engine

        if self.engine is not None:
            self.engine.log.close()
        self.engine = load_engine(self.settings, nthread=2)
        self.engine.warm(rows=512)
        cat = self.engine.catalog
        from nba.data.simulator import ACTIONS

        unknown = [a for a in cat.action_ids if a not in ACTIONS]
        if unknown:
            raise ConfigError(f"the catalog's actions {unknown} have no truth in the simulator: the loop cannot "
                              "answer them")
        self._sim_index = np.array([ACTIONS.index(a) for a in cat.action_ids], dtype=np.int64)

    # --- running ------------------------------------------------------------------------

    def run(self) -> LoopReport:
        from nba.data.simulator import SimulationConfig, _Run

        cfg = self.config
        t0 = time.perf_counter()
        if self._withheld(0) and self._source_home is None:  # run without bootstrap (a built bank): withhold now
            from nba.serving.bundle import build

            self._use_own_strategy(withhold=self._withheld(0))
            build(self.settings)
        self._load_engine()
        sim = SimulationConfig(customers=cfg.customers, seed=cfg.seed, start=cfg.loop_start,
                               months=max(cfg.months, 2), contact_rate=cfg.contact_rate,
                               event_months=0)  # the loop's bank sends no behavioural events
        bank = _Run(sim, _NullSink())  # type: ignore[arg-type]  # a sink that keeps nothing: the loop reads the month itself
        bank.decider = self._decide
        months: list[MonthReport] = []
        with ThreadPoolExecutor(max_workers=1) as p1, ThreadPoolExecutor(max_workers=1) as p2:
            bank.pools = (p1, p2)
            for k in range(-sim.warmup_months, cfg.months):
                tm = time.perf_counter()
                self._month_ctx = {}
                if k >= 0 and cfg.new_action is not None and k == cfg.new_action_month - 1:
                    self._add_new_action()
                bank._month(k)
                if k < 0:
                    continue
                t_bank = time.perf_counter()
                n_resp = self._respond(bank)
                t_resp = time.perf_counter()
                report = self._evaluate(k)
                t_eval = time.perf_counter()
                report.seconds = {"decide_and_bank": round(t_bank - tm, 2), "respond": round(t_resp - t_bank, 2),
                                  "evaluate": round(t_eval - t_resp, 2)}
                if self.on_month is not None:
                    self.on_month(self, k)
                if cfg.retrain and k < cfg.months - 1:
                    report.retrain = self.retrain()
                    report.seconds["retrain_and_bundle"] = round(time.perf_counter() - t_eval, 2)
                months.append(report)
                self.echo(f"    month {k + 1}/{cfg.months} ({report.start}): {report.decisions:,} decisions, "
                          f"{n_resp:,} outcomes; true value per customer platform {report.truth['platform']:.3f} "
                          f"vs legacy {report.truth['legacy']:.3f} (oracle {report.truth['oracle']:.3f}); "
                          f"{sum(report.seconds.values()):.0f} s")
            for job in [j for month in bank.jobs for j in month]:
                job.result()
        self.engine.log.close()
        return LoopReport(config={**asdict(cfg), "start": cfg.start.isoformat(),
                                  "loop_start": cfg.loop_start.isoformat()},
                          months=months, seconds={"total": round(time.perf_counter() - t0, 2)})

    def _decide(self, *, run: Any, k: int, pick: np.ndarray, channel: np.ndarray, event_s: np.ndarray,
                features: dict[str, np.ndarray], p_t: np.ndarray, p_c: np.ndarray) -> tuple[np.ndarray, ...]:
        """The simulator's decider hook: the platform decides for the picked customers."""
        from nba import schemas
        from nba.data.simulator import CHANNELS
        from nba.decisioning.core import GROUP_CODE, NOTHING
        from nba.decisioning.tables import contacts, decision_tables
        from nba.records import SEGMENT_RECORDS, segment_tables
        from nba.serving.batch import engine_id
        from nba.stores.decisions.sqlite import write_batch

        eng = self.engine
        cat = eng.catalog
        reader = eng.features
        m = len(pick)
        ids = (pick + 1).astype(np.int64)
        now = event_s.astype(np.float64)
        cols = _stored_columns(run, tuple(reader.stored_names), features, pick, self._streaming_kinds())
        cols.update({n: np.asarray(v, dtype=object if isinstance(v[0], str) else np.float64) if len(v) else v
                     for n, v in reader.transform(cols, [int(t) for t in event_s]).items()})
        chan_names = [CHANNELS[c] for c in channel]
        ch = np.array([cat.channel_names.index(c) for c in chan_names], dtype=np.int64)
        # seeded decision ids: the exploration and Thompson draws are keyed on them, so the same
        # seed gives the same loop (random ids made two runs of one seed show different actions)
        head = hashlib.sha256(f"loop:{self.config.seed}:{k}:{self._calls}".encode()).hexdigest()[:16]
        self._calls += 1
        given = [f"{head}{i:016x}" for i in range(m)]
        d, env, missing, dids = eng.run_core(ids.tolist(), ch, now, cols, [True] * m, cat.default_k,
                                             decision_ids=given)
        fm = np.zeros(m, dtype=np.int64)
        tables = decision_tables(cat, d, decision_ids=dids, customer_ids=ids, channel=ch, now=now,
                                 features_missing=fm, k=cat.default_k, source=f"loop:month{k + 1}", env=env,
                                 model_versions=eng.model_versions)
        seg = segment_tables(tables, {"nba.bundle": eng.bundle})
        batch = f"loop-m{k + 1:02d}-{engine_id()}"
        write_batch(self.settings.decision_log_dir, batch, {r.name: seg[r.name] for r in SEGMENT_RECORDS})
        dids_arr = np.asarray(dids, dtype=object)
        for ci, cname in enumerate(cat.channel_names):  # the batch index holds one channel per call
            on = ch == ci
            if on.any():
                eng.log.index_batch(batch, dids_arr[on].tolist(), ids[on].tolist(), cname)
        eng.policy.record_contacts(contacts(cat, d, decision_ids=dids, customer_ids=ids, channel=ch, now=now,
                                            k=cat.default_k))
        shown = d.shown
        treated = shown != NOTHING
        sim_action = np.where(treated, self._sim_index[np.maximum(shown, 0)], 0)
        # the truth of the month, for the evaluation: columns in catalog order
        values = _true_values(run, pick)[self._sim_index].T  # (m, A)
        pt = p_t[self._sim_index].T
        self._month_ctx = {"pick": pick, "dids": dids, "pt": pt, "pc": p_c[self._sim_index].T, "value": values,
                           "start": int(event_s.min()) if m else 0, "k": k,
                           "row_of": {did: i for i, did in enumerate(dids)}}
        rows = np.arange(m)
        for i in np.flatnonzero(treated):
            self.truth_of[dids[i]] = float(pt[i, shown[i]])
        self._month_ctx["decision_of_customer"] = dict(zip(pick.tolist(), dids, strict=True))
        explore = d.group == GROUP_CODE["explore"]
        cold = getattr(eng.models, "cold_start", None)
        self._month_ctx["cold_start"] = {}
        if cold is not None:
            for j in np.flatnonzero(cold.cold):
                on = shown == j
                cand = d.alive[:, j]
                self._month_ctx["cold_start"][cat.action_ids[j]] = {
                    "candidates": int(cand.sum()), "shown": int(on.sum()),
                    "shown_by_thompson": int((on & (d.group == GROUP_CODE["nba"])).sum()),
                    "true_mean_p_shown": float(pt[on, j].mean()) if on.any() else math.nan,
                    "true_mean_p_candidates": float(pt[cand, j].mean()) if cand.any() else math.nan,
                    "posterior_mean": float(cold.mean[j]), "alpha": float(cold.alpha[j]), "beta": float(cold.beta[j]),
                    "logged_probability_mean": float(d.probability[on].mean()) if on.any() else math.nan,
                    "logged_probability_min": float(d.probability[on].min()) if on.any() else math.nan}
        del rows, schemas
        return sim_action, treated, d.probability, explore

    def _respond(self, bank: Any) -> int:
        """Every shown action's answer through `DecisionEngine.respond`."""
        from nba.data.simulator import ACTIONS, OUTCOMES

        ctx = self._month_ctx
        if not ctx:
            return 0
        p = bank.inter.pieces
        idx, action, treated = p["idx"][-1], p["action"][-1], p["treated"][-1]
        outcome, value, outcome_s = p["outcome"][-1], p["value"][-1], p["outcome_s"][-1]
        dec = ctx["decision_of_customer"]
        n = 0
        cold = ctx.get("cold_start", {})
        for c in cold.values():
            c["accepted"] = 0
        for i in np.flatnonzero(treated):
            did = dec[int(idx[i])]
            a, o = ACTIONS[int(action[i])], OUTCOMES[int(outcome[i])]
            self.engine.respond(did, a, o, float(value[i]), timestamp=float(outcome_s[i]))
            if a in cold and o == "accepted":
                cold[a]["accepted"] += 1
            n += 1
        return n

    # --- evaluation -----------------------------------------------------------------------

    def _evaluate(self, k: int) -> MonthReport:
        """Truth and OPE of every policy on this month's decisions, the OPE from the log."""
        from datetime import UTC, datetime

        from nba.evaluation.incrementality import decision_outcomes
        from nba.evaluation.ope import greedy_target, off_policy_value
        from nba.evaluation.policy import _candidate_matrices, platform_targets
        from nba.records import NO_ACTION
        from nba.stores.decisions import read_log

        ctx = self._month_ctx
        frames = read_log(self.settings.decision_log_dir)
        month_ids = set(ctx["dids"])
        frames.decisions = frames.decisions[frames.decisions["decision_id"].astype(str).isin(month_ids)]
        frame = decision_outcomes(frames).reset_index(drop=True)
        m = _candidate_matrices(frames, frame)
        n, K = m.available.shape
        rows = np.arange(n)
        # the truth on the log's columns (its candidate actions + do nothing)
        cat_idx = {a: j for j, a in enumerate(self.engine.catalog.action_ids)}
        r_of = ctx["row_of"]
        at = np.array([r_of[str(d)] for d in m.decisions["decision_id"]], dtype=np.int64)
        pt = np.zeros((n, K))
        val = np.zeros((n, K))
        for col, a in enumerate(m.actions):
            if a == NO_ACTION:
                continue
            pt[:, col] = ctx["pt"][at, cat_idx[a]]
            val[:, col] = ctx["value"][at, cat_idx[a]]
        ev = pt * val  # true expected reward of each candidate
        avail = m.available.copy()
        none = m.nothing
        no_cand = ~avail.any(axis=1)
        with np.errstate(divide="ignore"):
            logit = np.where(avail, np.log(pt) - np.log1p(-pt), -np.inf)
        soft = np.exp(logit - np.where(no_cand, 0.0, logit.max(axis=1))[:, None])
        soft[no_cand, none] = 1.0
        targets = {
            "platform": platform_targets(m)["nba"],
            "legacy": soft / soft.sum(axis=1, keepdims=True),
            "none": np.eye(K)[np.full(n, none)],
            "random": platform_targets(m)["random"],
            "oracle": greedy_target(ev, avail, fallback=none),
        }
        per_row = {p: (t * ev).sum(axis=1) for p, t in targets.items()}
        truth = {p: float(v.mean()) if n else math.nan for p, v in per_row.items()}
        diff = per_row["platform"] - per_row["legacy"]
        se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        gain = truth["oracle"] - truth["none"]
        r = frame["value"].to_numpy(np.float64)
        mu = m.decisions["probability"].to_numpy(np.float64)
        support = m.available & (mu < 1.0 - 1e-12)[:, None]
        support[rows, m.logged] = True
        support[:, none] |= True
        q = np.nan_to_num(m.propensity) * np.nan_to_num(m.value)
        q[:, none] = 0.0
        ope: dict[str, dict[str, dict[str, Any]]] = {}
        for p, t in targets.items():
            pv = off_policy_value(r, m.logged, mu, t, policy=p, q_hat=q, support=support,
                                  clusters=m.decisions["customer_id"].to_numpy(), action_names=m.actions,
                                  include_logged=False)
            ope[p] = {}
            for e in pv.estimates:
                lo, hi = e.ci_low, e.ci_high
                name = e.estimator
                covers = None if not (math.isfinite(lo) and math.isfinite(hi)) else bool(
                    lo - 1e-9 <= truth[p] <= hi + 1e-9)
                ope[p][name] = {"value": e.value, "ci_low": lo, "ci_high": hi, "covers": covers,
                                  "ess": pv.diagnostics.ess}
        start = datetime.fromtimestamp(ctx["start"], tz=UTC).strftime("%Y-%m")
        shown = (m.decisions["action_id"].astype(str) != NO_ACTION)
        return MonthReport(
            month=k + 1, start=start, decisions=n, shown=int(shown.sum()),
            accepted=int(frame["converted"].sum()),
            truth=truth, ope=ope,
            platform_vs_legacy={"mean": float(diff.mean()), "ci_low": float(diff.mean() - Z95 * se),
                                "ci_high": float(diff.mean() + Z95 * se)},
            oracle_gain_captured=float((truth["platform"] - truth["none"]) / gain) if gain > 0 else math.nan,
            cold_start=dict(ctx.get("cold_start", {})))

    # --- learning -------------------------------------------------------------------------

    def retrain(self) -> dict[str, Any]:
        """Propensity on the whole log (IPS-weighted), the gates, and a new bundle if a
        champion moved."""
        from nba.serving.bundle import build
        from nba.stores.decisions import read_log
        from nba.training.config import load_model_config
        from nba.training.logged import logged_frames, train_logged
        from nba.training.registry import PromotionRefused, promote

        t0 = time.perf_counter()
        cfg = load_model_config(self.settings.home, "propensity", self.settings.work)
        feats = propensity_features(self.settings, cfg.feature_service)
        frames = read_log(self.settings.decision_log_dir, with_features=True)
        actions = [a for a in self.engine.catalog.action_ids]
        labelled = logged_frames(frames, feats, actions=actions, ips_clip=self.config.ips_clip, truth=self.truth_of)
        # a cold action gets a model once it has matured (cold_start.mature_positives accepted outcomes)
        cold = getattr(self.engine.models, "cold_start", None)
        immature: dict[str, str] = {}
        if cold is not None:
            from nba.config import gates_path, load_gates

            cs = load_gates(gates_path(self.settings.home)).cold_start
            mature = cs.mature_positives if cs is not None else 1
            for j in np.flatnonzero(cold.cold):
                a = self.engine.catalog.action_ids[j]
                pos = int(labelled[a].frame["label"].sum()) if a in labelled else 0
                if pos < mature:
                    labelled.pop(a, None)
                    immature[a] = (f"cold start: {pos} accepted outcomes in the log, fewer than mature_positives "
                                   f"{mature}; Thompson sampling from its posterior goes on")
        trained, skipped = train_logged(self.settings, labelled, min_positives=int(cfg.options.get("min_positives", 1)))
        skipped.update(immature)
        t_train = time.perf_counter()
        promoted, refused = {}, {}
        for tm in trained:
            try:
                promoted[tm.name] = promote(self.settings, tm.name, reason="closed loop: retrained on the log").version
            except PromotionRefused as exc:
                refused[tm.name] = str(exc)
        t_gate = time.perf_counter()
        rebuilt = False
        if promoted or cold is not None:  # a cold action's posterior moves with every month's outcomes
            build(self.settings)
            self._load_engine()
            rebuilt = True
        return {"trained": [t.name for t in trained], "promoted": promoted, "refused": refused,
                "skipped": skipped, "bundle_rebuilt": rebuilt,
                "mae_vs_truth": {t.name: t.metrics.get("mae_vs_truth") for t in trained},
                "seconds": {"train": round(t_train - t0, 2), "gates": round(t_gate - t_train, 2),
                            "bundle": round(time.perf_counter() - t_gate, 2)}}


LOOP_HOME = "loop_home"


def strategy_copy(settings: Settings, source: Path, *, withhold: tuple[str, ...] = (),
                  cold: tuple[str, ...] = ()) -> tuple[Settings, list[str]]:
    """The loop's own project folder `<work>/loop_home`: features/, training/ and evaluation/
    link to `source`'s, serving/ is a copy whose catalog leaves out the uplift models the
    priority formula does not read and the `withhold` actions, and marks the `cold` ones
    `cold_start: true`. Returns the settings pointing at it (every path made absolute) and
    what was changed, in words."""
    import re
    import shutil

    import yaml

    from nba.catalog import ACTIONS_FILE, POLICIES_FILE

    home = (settings.work / LOOP_HOME).resolve()
    source = Path(source).resolve()
    (home / "serving").mkdir(parents=True, exist_ok=True)
    for name in ("features", "training", "evaluation"):
        link = home / name
        if not link.exists() and (source / name).exists():
            link.symlink_to(source / name, target_is_directory=True)
    for f in (source / "serving").iterdir():
        if f.is_file() and f.name != Path(ACTIONS_FILE).name:
            shutil.copyfile(f, home / "serving" / f.name)
    spec = yaml.safe_load((source / ACTIONS_FILE).read_text())
    pol = yaml.safe_load((source / POLICIES_FILE).read_text()) or {}
    priority = str((pol.get("arbitration") or {}).get("priority", "propensity * value * (1 + lever)"))
    notes = []
    if not re.search(r"\buplift\b", priority):
        stripped = [a["id"] for a in spec["actions"] if a.pop("uplift_model", None)]
        if stripped:
            notes.append(f"uplift models of {', '.join(stripped)} left out: the priority '{priority}' does not read "
                         "uplift (never served; the loop retrains propensity only)")
    unknown = sorted((set(withhold) | set(cold)) - {a["id"] for a in spec["actions"]})
    if unknown:
        raise ConfigError(f"the loop's new action(s) {unknown} are not in {source / ACTIONS_FILE}")
    if withhold:
        spec["actions"] = [a for a in spec["actions"] if a["id"] not in withhold]
        notes.append(f"withheld until later: {', '.join(withhold)}")
        t_file = home / "serving" / "triggers.yaml"
        if t_file.is_file():  # the triggers that propose a withheld action propose the others (or go)
            trig = yaml.safe_load(t_file.read_text()) or {}
            kept = []
            for t in trig.get("triggers") or []:
                listed = t.get("actions") or []
                t["actions"] = [a for a in listed if a not in withhold]
                if listed and not t["actions"] and not t.get("issues"):
                    notes.append(f"trigger {t.get('id')} left out: it proposes only withheld actions")
                    continue
                if not t["actions"]:
                    t.pop("actions")
                kept.append(t)
            trig["triggers"] = kept
            t_file.write_text(yaml.safe_dump(trig, sort_keys=False))
    for a in spec["actions"]:
        if a["id"] in cold:
            a["cold_start"] = True
            notes.append(f"{a['id']} joins with no history and no model (cold start)")
    spec["version"] = f"{spec['version']}+loop" + "".join(f"-no-{a}" for a in withhold)
    (home / ACTIONS_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    update: dict[str, Any] = {"home": home, "work_dir": settings.work.resolve(),
                              "mlflow_dir": settings.path(settings.mlflow_dir).resolve(),
                              "feature_repo": settings.feature_repo_src.resolve()}
    if settings.data_dir is not None:
        update["data_dir"] = settings.path(settings.data_dir).resolve()
    return settings.model_copy(update=update), notes


def propensity_features(settings: Settings, service: str) -> list[str]:
    """The features of the propensity models' feature service (from the Feast registry)."""
    from nba.serving.bundle import feature_fields

    return [f["name"] for f in feature_fields(settings, service)]


def train_catalog_models(settings: Settings) -> dict[str, str]:
    """Train every model the catalog reads on the simulated history and promote it behind the
    gates (a first champion has nothing to beat); returns name -> champion version."""
    from nba import catalog as catalog_mod
    from nba.serving.bundle import feature_fields
    from nba.training import propensity
    from nba.training.churn import train_churn
    from nba.training.clv import train_clv
    from nba.training.registry import promote
    from nba.training.uplift import train_uplift

    spec, pol, digest, where = catalog_mod.read_files(settings.home)
    fields = [f["name"] for f in feature_fields(settings, pol.feature_service)]
    # every model the catalog names must be registered for the bundle build (uplift too)
    cat = catalog_mod.compile_catalog(spec, pol, fields, digest=digest, where=where)
    needed = set(cat.models.values())
    trained = list(propensity.train_propensity(settings, actions=[a.id for a in cat.actions if not a.cold_start]))
    if "nba-churn" in needed:
        trained.append(train_churn(settings))
    if "nba-clv" in needed:
        trained.append(train_clv(settings, "sim"))
    uplift = sorted(n.removeprefix("nba-uplift-") for n in needed if n.startswith("nba-uplift-"))
    if uplift:
        trained += train_uplift(settings, "sim", actions=uplift)
    from nba.training import tracking
    from nba.training.registry import PromotionRefused

    champions = {}
    for m in trained:
        try:
            champions[m.name] = promote(settings, m.name, reason="closed loop: first champion").version
        except PromotionRefused as exc:
            # the bank must start from some model: the refused one serves, named in the log, until
            # a model trained on the loop's own log passes the gates
            logger.warning("first champion set despite the gates: %s", exc)
            tracking.configure(settings).set_registered_model_alias(m.name, "champion", m.version)
            champions[m.name] = f"{m.version} (gates refused: {str(exc).splitlines()[-1].strip()})"
    return champions


# --- the report ---------------------------------------------------------------------------


def write_json(report: LoopReport, path: Path) -> Path:
    from nba.io import write_text

    return write_text(json.dumps(report.to_dict(), indent=2, default=float) + "\n", Path(path))


def write_html(report: LoopReport, path: Path) -> Path:
    """One page: the true value per customer of each policy by month (a plot and a table), the
    OPE estimates with their intervals against the truth, and the platform - legacy difference."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nba.io import write_text

    months = [m.start for m in report.months]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for p in POLICIES:
        axes[0].plot(months, [m.truth[p] for m in report.months], marker="o", label=p)
    axes[0].set_title("true value per decided customer")
    axes[0].set_ylabel("euros of accepted value")
    axes[0].legend()
    x = np.arange(len(months))
    for j, p in enumerate(POLICIES):
        est = [m.ope[p][PRIMARY] for m in report.months]
        v = np.array([e["value"] for e in est])
        lo = np.array([e["ci_low"] for e in est])
        hi = np.array([e["ci_high"] for e in est])
        off = x + (j - 2) * 0.12
        axes[1].errorbar(off, v, yerr=[v - lo, hi - v], fmt="o", capsize=3, label=f"{p} ({PRIMARY.upper()})")
        axes[1].scatter(off, [m.truth[p] for m in report.months], marker="x", color="black")
    axes[1].set_xticks(x, months)
    axes[1].set_title(f"off-policy estimates ({PRIMARY.upper()}, 95 % CI) vs truth (x)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    head = "".join(f"<th>{p}</th>" for p in POLICIES)
    rows = []
    for m in report.months:
        d = m.platform_vs_legacy
        cells = "".join(f"<td>{m.truth[p]:.3f}<br><small>{m.ope[p][PRIMARY]['value']:.3f} "
                        f"[{m.ope[p][PRIMARY]['ci_low']:.3f}, {m.ope[p][PRIMARY]['ci_high']:.3f}]"
                        f"{'' if m.ope[p][PRIMARY]['covers'] else ' &#10007;'}</small></td>" for p in POLICIES)
        rows.append(f"<tr><td>{m.start}</td><td>{m.decisions:,}</td>{cells}<td>{d['mean']:.3f} "
                    f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]</td><td>{m.oracle_gain_captured:.1%}</td></tr>")
    cov = ", ".join(f"{e.upper()} {report.coverage(e):.0%}" for e in ESTIMATORS)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>nba closed loop</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body><h1>The closed loop on the simulated bank</h1>
<p>{html.escape(json.dumps(report.config))}</p>
<img src="data:image/png;base64,{png}" alt="true value and OPE by month">
<p>Each cell: the true value per decided customer (from the simulator's truth); below it the {PRIMARY.upper()}
estimate from the decision log with its 95 % CI (&#10007;: the interval misses the truth).
Coverage of the truth by the intervals: {cov}.</p>
<table><tr><th>month</th><th>decisions</th>{head}<th>platform - legacy (95 % CI)</th>
<th>oracle gain captured</th></tr>{''.join(rows)}</table>
<p>Total {report.seconds.get('total', 0):.0f} s.</p></body></html>"""
    return write_text(page, Path(path))
