"""Scheduled scans: `nba triggers scan --customers FILE [--at T]`.

The schedule triggers of `serving/triggers.yaml` (no interaction for 30 days, an expired card,
an upgrade available, an abandoned application) evaluated over the whole population with the
vectorised core, in chunks, exactly as events evaluate them one at a time:

    features (the file when it holds every stored feature, else the online store, as
    `nba decide-batch`) + scores -> the triggers' conditions, dedup windows and priority
    (`nba.decisioning.triggers.evaluate`) -> claim the firings (trigger store) -> one decision
    per firing through the whole core on the trigger's actions and channels, the engine
    choosing the channel -> the decision log (one batch segment per scan, `source`
    `scan:<trigger>`), the contacts for the contact policies

Streaming features (`nba.triggers.STREAMING_*`) the feature service does not serve yet are
read from the file's columns of the same name when it has them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nba import console, schemas
from nba.decisioning.tables import contacts, decision_tables
from nba.decisioning.triggers import NONE, derived_features, evaluate
from nba.errors import ConfigError
from nba.records import SEGMENT_RECORDS, segment_tables
from nba.serving.batch import _column, chunk_features, engine_id, file_features, read_customers
from nba.serving.triggering import subset
from nba.settings import Settings
from nba.stores.decisions.sqlite import write_batch
from nba.stores.trigger_state import Fire
from nba.triggers import DERIVED_FEATURES, STREAMING_NUMBERS, STREAMING_STRINGS


@dataclass
class ScanSummary:
    customers: int
    triggers: tuple[str, ...]
    fired: dict[str, int] = field(default_factory=dict)  # trigger -> decisions started
    held_back: int = 0  # fired within a dedup window
    decisions_with_action: int = 0
    to_deliver: int = 0  # outbound decisions that show an action (an outbox message each)
    channels: dict[str, int] = field(default_factory=dict)
    batch_id: str | None = None
    feature_source: str = ""
    features_missing: int = 0  # customers scanned whose stored features were found nowhere
    seconds: float = 0.0
    load_seconds: float = 0.0
    decision_ids_to_deliver: list[str] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        started = sum(self.fired.values())
        lines = [f"{self.customers:,} customers scanned in {self.seconds:.2f} s "
                 f"({self.customers / max(self.seconds, 1e-9):,.0f}/s) after loading in {self.load_seconds:.1f} s; "
                 f"{started:,} decisions started ({self.held_back:,} firings held back by a dedup window), "
                 f"{self.decisions_with_action:,} with an action, {self.to_deliver:,} to deliver",
                 f"features from {self.feature_source or 'nowhere'}; {self.features_missing:,} customers without features"
                 + (" (the triggers and rules saw no stored feature of theirs: mostly 'do nothing')"
                    if self.features_missing else ""),
                 f"decision log batch {self.batch_id or '(none: nothing fired)'}"]
        lines += [f"  {t:<24} {self.fired.get(t, 0):>10,}" for t in self.triggers]
        lines += [f"  on {c:<21} {n:>10,}" for c, n in sorted(self.channels.items(), key=lambda x: -x[1])]
        return "\n".join(lines)


def scan(settings: Settings, customers: Path, *, at: float | None = None, trigger_ids: list[str] | None = None,
         chunk: int = 100_000, progress: bool = False, engine: Any = None, k: int | None = None) -> ScanSummary:
    """Evaluate the schedule triggers for every customer of the file; start their decisions."""
    import pyarrow as pa

    from nba.serving.bundle import load_engine

    t0 = time.perf_counter()
    frame = read_customers(customers)
    engine = engine or load_engine(settings, nthread=2)
    trig = engine.triggering
    scheduled = trig.triggers.scheduled
    if trigger_ids:
        unknown = [t for t in trigger_ids if t not in {s.id for s in scheduled}]
        if unknown:
            raise ConfigError(f"trigger(s) {unknown} are not schedule triggers of the trigger file; scans run "
                              f"{[s.id for s in scheduled]}")
        scheduled = tuple(s for s in scheduled if s.id in trigger_ids)
    summary = ScanSummary(customers=len(frame), triggers=tuple(s.id for s in scheduled))
    if not scheduled:
        summary.load_seconds = time.perf_counter() - t0
        return summary
    reader = engine.features
    from nba.serving.models import SMALL

    engine.warm(rows=max(1, min(len(frame), chunk, SMALL + 1)))
    t_loaded = time.perf_counter()
    cat = engine.catalog
    stored = list(reader.stored_names)
    from_file, summary.feature_source = file_features(cat, stored, frame.columns)
    # streaming columns of the file override what the online store holds (a scan of a population
    # file states its moment); the derived ones are then derived again from them, unless given
    streaming = [c for c in (*STREAMING_NUMBERS, *STREAMING_STRINGS, *DERIVED_FEATURES) if c in frame.columns]
    rederive = [c for c in DERIVED_FEATURES if c not in frame.columns] if any(
        c in frame.columns for c in (*STREAMING_NUMBERS, *STREAMING_STRINGS)) else []
    now = float(at if at is not None else time.time())
    k = k or cat.default_k
    tids = [t.id for t in scheduled]
    batch_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-scan-{engine_id()}"
    parts: dict[str, list[Any]] = {"decisions": [], "candidates": [], "filtered": [], "features": []}
    contacts_all: list[Any] = []
    outbox: list[Any] = []
    index: list[tuple[list[str], list[int], str]] = []
    bar = console.progress(len(frame), "customers scanned", "customer", enabled=progress)
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start:start + chunk]
        ids = part[schemas.ENTITY_KEY].to_numpy()
        n = len(ids)
        cols, found = chunk_features(reader, part, ids, stored, from_file, now)
        summary.features_missing += n - int(sum(found))
        env, missing = engine.environment(ids.tolist(), cols, found)
        for c in rederive:
            env.pop(c, None)
        for c in streaming:
            v = _column(part[c])
            env[c] = (v[0] if n == 1 else v) if not isinstance(v, np.ndarray) or v.dtype == object else (
                float(v[0]) if n == 1 else v)
        if rederive:
            env.update(derived_features(env, now if n == 1 else np.full(n, now)))
        last = trig.store.last_fired(ids, tids)
        hits = evaluate(cat, scheduled, env, n, scorer=engine.models, now=now if n == 1 else np.full(n, now),
                        last_fired=last)
        summary.held_back += int(hits.deduped.any(axis=1).sum())
        rows = np.flatnonzero(hits.chosen != NONE)
        ok = np.asarray(trig.store.claim([Fire(tids[hits.chosen[i]], int(ids[i]), now, None,
                                               scheduled[hits.chosen[i]].dedup_s) for i in rows]), dtype=bool)
        rows = rows[ok] if rows.size else rows
        missing_set = set(missing)
        for j in np.unique(hits.chosen[rows]) if rows.size else ():
            t = scheduled[int(j)]
            sel = rows[hits.chosen[rows] == j]
            m = sel.size
            sub = subset(env, sel, n)
            allow = np.asarray(t.channels, dtype=bool)[None, :].repeat(m, axis=0)
            chan = np.zeros(m, dtype=np.int64)
            sel_ids = ids[sel]
            d, dids, _ = engine.decide_env(sel_ids.tolist(), chan, np.full(m, now), sub, k, allow=allow,
                                           propose=np.asarray(t.propose, dtype=bool))
            fm = np.array([int(i in missing_set) for i in sel], dtype=np.int64)
            tables = decision_tables(cat, d, decision_ids=dids, customer_ids=sel_ids, channel=chan, now=now,
                                     features_missing=fm, k=k, source=f"scan:{t.id}", env=sub,
                                     model_versions=engine.model_versions, deliver=np.full(m, bool(t.outbound)))
            if tables.outbox is not None:
                outbox.append(tables.outbox)
            for name, table in segment_tables(tables, {"nba.bundle": engine.bundle}).items():
                parts[name].append(table)
            contacts_all.append(contacts(cat, d, decision_ids=dids, customer_ids=sel_ids, channel=chan, now=now, k=k))
            for ci in np.unique(chan):
                at_c = chan == ci
                index.append(([dids[i] for i in np.flatnonzero(at_c)], sel_ids[at_c].tolist(),
                              cat.channel_names[int(ci)]))
            shown = d.shown >= 0
            outbound = np.array([c.direction == "outbound" for c in cat.channels])[chan]
            deliver = shown & outbound & t.outbound
            summary.fired[t.id] = summary.fired.get(t.id, 0) + m
            summary.decisions_with_action += int(shown.sum())
            summary.to_deliver += int(deliver.sum())
            summary.decision_ids_to_deliver += [dids[i] for i in np.flatnonzero(deliver)]
            for ci, cnt in zip(*np.unique(chan[shown], return_counts=True), strict=True):
                name = cat.channel_names[int(ci)]
                summary.channels[name] = summary.channels.get(name, 0) + int(cnt)
        bar.update(n)
    bar.close()
    if parts["decisions"]:
        joined = {name: pa.concat_tables(ts) for name, ts in parts.items()}
        write_batch(settings.decision_log_dir, batch_id, {r.name: joined[r.name] for r in SEGMENT_RECORDS})
        for i, (dids, cids, channel) in enumerate(index):  # the messages with the last index, one transaction
            engine.log.index_batch(batch_id, dids, cids, channel, outbox if i == len(index) - 1 else ())
        engine.policy.record_contacts([c for cs in contacts_all for c in cs])
        summary.batch_id = batch_id
    summary.seconds = time.perf_counter() - t_loaded
    summary.load_seconds = t_loaded - t0
    return summary
