"""Our uplift champion against the field's libraries on Hillstrom `visit`, in their metric.

The protocol of the reference figures (scikit-uplift and causalml meta-learners, gradient
boosting, untuned): per e-mail, that arm's customers and the No E-Mail hold-out, split 50/50
stratified by arm with seeds 11-15; fit on one half, the normalised Qini
(`nba.training.metrics.qini_auc_score`, scikit-uplift's `qini_auc_score`) on the other. The
best normalised Qini measured with those libraries: 0.056 +- 0.006 (Womens e-mail,
S-learner) and 0.013 +- 0.008 (Mens e-mail).

Our champion is what `nba train uplift` does, on the training half only: every learner of
training/uplift.yaml fitted on 70 % of it and scored by Qini on the other 30 %; the first
learner of the config (the S-learner) is kept unless another beats it there by more than the
noise of random scores; refit on the whole half. `max_champion`: the bare maximum (the rule
before). Each learner's test figure (fitted on the whole half) is printed beside it, and
with `--extra` some variants of the parameters, so the choice can be judged. `cv_champion`:
the bare maximum of the mean Qini over 3 folds of the training half (column `chosen`:
champion / max / 3 folds).

    NBA_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_uplift_qini.py [--seeds 11 12 13 14 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REFERENCE = {"Womens E-Mail": (0.056, 0.006), "Mens E-Mail": (0.013, 0.008)}
VARIANTS = {  # label -> XGBoost parameters over the config's (only with --extra)
    "deeper": {"max_depth": 4, "min_child_weight": 50, "n_estimators": 200},
    "gbm-default": {"max_depth": 3, "min_child_weight": 1, "n_estimators": 100, "learning_rate": 0.1,
                    "subsample": 1.0},
}


def stratified(arm: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(len(arm), dtype=bool)
    for a in np.unique(arm):
        idx = rng.permutation(np.flatnonzero(arm == a))
        mask[idx[:int(round(len(idx) * share))]] = True
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    parser.add_argument("--extra", action="store_true", help="also measure the parameter variants")
    parser.add_argument("--first", default=None, help="move this learner first in the config's list")
    parser.add_argument("--markdown", action="store_true", help="also print the per-seed table as markdown")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    data_dir = os.environ.get("NBA_DATA_DIR") or (root.parent / "shared" / "data")

    from nba.data.hillstrom import CONTROL_ARM, load_hillstrom
    from nba.settings import Settings, disable_telemetry
    from nba.training import uplift, uplift_learners
    from nba.training.config import load_model_config
    from nba.training.metrics import qini_auc_score, qini_coefficient

    disable_telemetry()
    settings = Settings(home=root, data_dir=Path(data_dir))
    cfg = load_model_config(root, uplift.FAMILY)
    params = uplift.model_params(cfg, "hillstrom")
    learners = list(cfg.options.get("learners", uplift_learners.LEARNERS))
    if args.first:
        learners = [args.first] + [k for k in learners if k != args.first]
    data = load_hillstrom(settings=settings)
    X_all = data.customers.drop(columns=["customer_id", "event_timestamp"])
    arm_all = data.experiment["arm"].astype(str).to_numpy()
    y_all = data.experiment["visit"].to_numpy(np.float64)
    print(f"params {params}; learners {learners}")
    summary: dict[str, dict[str, list[float]]] = {}
    for email in ("Womens E-Mail", "Mens E-Mail"):
        keep = np.isin(arm_all, [email, CONTROL_ARM])
        X, arm, y = X_all[keep].reset_index(drop=True), arm_all[keep], y_all[keep]
        t = (arm == email).astype(np.int64)
        cols = ["champion", "max_champion", "cv_champion", *learners, *([f"{k}:{v}" for v in VARIANTS for k in ("s_learner", "t_learner")]
                                           if args.extra else [])]
        per: dict[str, list[float]] = {c: [] for c in cols}
        chosen = []
        print(f"\n{email} vs {CONTROL_ARM}, visit, normalised Qini on the test half "
              f"(reference {REFERENCE[email][0]:.3f} +- {REFERENCE[email][1]:.3f})")
        print(f"{'seed':>5} {'chosen':<42}" + "".join(f"{c:>22}" for c in cols) + f"{'s':>6}")
        for seed in args.seeds:
            t0 = time.perf_counter()
            rng = np.random.default_rng(seed)
            test = stratified(arm, 0.5, rng)
            tr = np.flatnonzero(~test)
            val_in = stratified(arm[tr], 0.3, rng)
            fit_rows, val_rows = tr[~val_in], tr[val_in]
            scores: dict[str, float] = {}
            val_q: dict[str, float] = {}
            for kind in learners:
                m = uplift_learners.make_learner(kind, params, min_positives=10, random_state=seed)
                m.fit(X.iloc[fit_rows], t[fit_rows], y[fit_rows])
                val_q[kind] = qini_coefficient(m.predict(X.iloc[val_rows]), y[val_rows], t[val_rows])
                full = uplift_learners.make_learner(kind, params, min_positives=10, random_state=seed)
                full.fit(X.iloc[tr], t[tr], y[tr])
                scores[kind] = qini_auc_score(full.predict(X[test]), y[test], t[test])
            # the champion: `nba train uplift`'s choice (the config's first learner unless another
            # beats it on validation by more than the noise of random scores); the refit on the
            # whole half is that learner's fit
            noise = uplift.qini_null_sd(y[val_rows], t[val_rows])
            best = uplift.choose([uplift.Candidate(k, None, val_q[k], (np.zeros(1), np.zeros(1))) for k in learners],
                                 margin=noise).learner
            scores["champion"] = scores[best]
            top = max(val_q, key=lambda k: val_q[k])  # the bare maximum, the choice before
            scores["max_champion"] = scores[top]
            # the same choice by the mean Qini over 3 folds of the training half
            fold = np.empty(len(tr), dtype=np.int64)
            for a in np.unique(arm[tr]):
                idx = rng.permutation(np.flatnonzero(arm[tr] == a))
                fold[idx] = np.arange(len(idx)) % 3
            cv_q = {}
            for kind in learners:
                qs = []
                for f in range(3):
                    fr, vr = tr[fold != f], tr[fold == f]
                    m = uplift_learners.make_learner(kind, params, min_positives=10, random_state=seed)
                    m.fit(X.iloc[fr], t[fr], y[fr])
                    qs.append(qini_coefficient(m.predict(X.iloc[vr]), y[vr], t[vr]))
                cv_q[kind] = float(np.mean(qs))
            cv_best = max(cv_q, key=lambda k: cv_q[k])
            scores["cv_champion"] = scores[cv_best]
            best = f"{best}/{top}/{cv_best}"
            chosen.append(best)
            if args.extra:
                for v, extra in VARIANTS.items():
                    for kind in ("s_learner", "t_learner"):
                        m = uplift_learners.make_learner(kind, {**params, **extra}, min_positives=10,
                                                         random_state=seed)
                        m.fit(X.iloc[tr], t[tr], y[tr])
                        scores[f"{kind}:{v}"] = qini_auc_score(m.predict(X[test]), y[test], t[test])
            for c in cols:
                per[c].append(scores[c])
            print(f"{seed:>5} {best:<42}" + "".join(f"{scores[c]:>22.4f}" for c in cols)
                  + f"{time.perf_counter() - t0:>6.1f}")
        if args.markdown:
            print("| seed | chosen | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 2))
            for i, seed in enumerate(args.seeds):
                print(f"| {seed} | {chosen[i]} | " + " | ".join(f"{per[c][i]:.4f}" for c in cols) + " |")
            print("| mean +- sd | | " + " | ".join(f"{np.mean(per[c]):.4f} +- {np.std(per[c], ddof=1):.4f}"
                                                 for c in cols) + " |")
        print(f"{'mean':>5} {'':<42}" + "".join(f"{np.mean(per[c]):>22.4f}" for c in cols))
        print(f"{'sd':>5} {'':<42}" + "".join(f"{np.std(per[c], ddof=1):>22.4f}" for c in cols))
        ref, ref_sd = REFERENCE[email]
        for c in ("champion", "max_champion", "cv_champion"):
            m = float(np.mean(per[c]))
            print(f"{c} {m:.4f} vs reference {ref:.3f}: {'reached' if m >= ref else 'below'}")
        summary[email] = per
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
