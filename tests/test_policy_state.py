"""Contact-policy state: the same behaviour from SQLite (embedded) and Redis (production)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from nba.catalog import load_catalog
from nba.stores.policy_state import Contact, PolicyStoreError, RawHistory, to_history
from nba.stores.policy_state.redis import RedisPolicyStore
from nba.stores.policy_state.sqlite import SqlitePolicyStore
from tests.conftest import PROJECT_ROOT
from tests.test_catalog import FEATURES

REDIS_URL = "redis://127.0.0.1:6379/0"
T = 1_764_579_600.0


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqlitePolicyStore(tmp_path / "state.db")
        yield s
        s.close()
    else:
        s = RedisPolicyStore(REDIS_URL, prefix=f"nba-test-{uuid.uuid4().hex[:8]}:policy")
        yield s
        s.clear()
        s.close()


def test_contacts_and_rejections_round_trip_per_customer(store):
    store.record_contacts([
        Contact(1, "mortgage", "lending", "email", T - 100, "d1"),
        Contact(1, "mobile_app", "digital", "sms", T - 50, "d2"),
        Contact(2, "mortgage", "lending", "web", T - 10, "d3"),
        Contact(3, "mortgage", "lending", "web", T - 90 * 86400, "d4"),  # older than the window asked
    ])
    store.record_rejection(2, "mortgage", T - 5, "d3")
    h = store.history(np.array([2, 1, 3, 99]), since=T - 30 * 86400)
    got = sorted(zip(h.contact_row.tolist(), h.contact_action, h.contact_channel, h.contact_ts.tolist(),
                     strict=True))
    assert got == [(0, "mortgage", "web", T - 10), (1, "mobile_app", "sms", T - 50), (1, "mortgage", "email", T - 100)]
    assert list(zip(h.reject_row.tolist(), h.reject_action, h.reject_ts.tolist(), strict=True)) == [
        (0, "mortgage", T - 5)]


def test_writes_are_idempotent_on_decision_and_action(store):
    c = Contact(7, "mortgage", "lending", "email", T, "same-decision")
    store.record_contacts([c])
    store.record_contacts([c])
    store.record_rejection(7, "mortgage", T, "same-decision")
    store.record_rejection(7, "mortgage", T, "same-decision")
    h = store.history([7], since=T - 1)
    assert h.contact_row.tolist() == [0] and h.reject_row.tolist() == [0]


def test_a_customer_asked_for_twice_gets_the_history_on_both_rows(store):
    store.record_contacts([Contact(5, "mortgage", "lending", "email", T, "d")])
    h = store.history([5, 6, 5], since=T - 1)
    assert sorted(h.contact_row.tolist()) == [0, 2]


def test_a_batch_reads_its_customers_in_chunks(store):
    """More customers than one lookup takes: the chunked reads give every row to its customer."""
    contacts = [Contact(i, "mobile_app", "digital", "email", T - i, f"d{i}") for i in range(3_000)]
    store.record_contacts(contacts)
    ids = np.arange(2_999, -1, -1)
    h = store.history(ids, since=T - 10_000)
    assert h.contact_row.size == 3_000
    # row r holds customer ids[r]; its contact was at T - customer id
    assert np.allclose(h.contact_ts, T - ids[h.contact_row])


def test_the_history_maps_onto_catalog_indices():
    cat = load_catalog(PROJECT_ROOT, FEATURES)
    raw = RawHistory(np.array([0, 0]), ["mortgage", "retired_offer"], ["lending", "gone"], ["email", "web"],
                     np.array([T, T]), np.array([0]), ["mobile_app"], np.array([T]))
    h = to_history(cat, raw)
    assert h.contact_action.tolist() == [cat.action_ids.index("mortgage"), -1]
    assert h.contact_group.tolist() == [cat.groups.index("lending"), -1]
    assert h.contact_channel.tolist() == [cat.channel_names.index("email"), cat.channel_names.index("web")]
    assert h.reject_action.tolist() == [cat.action_ids.index("mobile_app")]


def test_sqlite_state_survives_reopening(tmp_path):
    s = SqlitePolicyStore(tmp_path / "state.db")
    s.record_contacts([Contact(1, "mortgage", "lending", "email", T, "d")])
    s.close()
    again = SqlitePolicyStore(tmp_path / "state.db")
    assert again.history([1], since=T - 1).contact_action == ["mortgage"]
    assert again.prune(before=T + 1) == 1
    assert again.history([1], since=0).contact_row.size == 0


def test_an_unreachable_redis_is_a_clear_error():
    s = RedisPolicyStore("redis://127.0.0.1:1/0", prefix="nba-test-down")
    with pytest.raises(PolicyStoreError, match="contact-policy store redis://127.0.0.1:1/0"):
        s.ping()
    with pytest.raises(PolicyStoreError):
        s.history([1], since=0)


# --- check and record, atomic across processes ---------------------------------------------

def test_reserve_records_only_at_the_version_read(store):
    h = store.history([5, 6], since=T - 86400)
    assert h.versions.get(5, 0) == 0
    mine = [Contact(5, "mortgage", "lending", "email", T, "d-mine")]
    assert store.reserve(mine, h.versions) is True
    assert store.history([5], since=T - 86400).contact_row.tolist() == [0]
    # a decision that read the state before that contact loses the race and records nothing
    late = [Contact(5, "mobile_app", "digital", "sms", T + 1, "d-late")]
    assert store.reserve(late, h.versions) is False
    assert store.history([5], since=T - 86400).contact_action == ["mortgage"]
    # a rejection moves the state on too (cool-downs read it); so does a plain record
    h2 = store.history([5, 6], since=T - 86400)
    store.record_rejection(5, "mortgage", T + 2, "d-mine")
    assert store.reserve(late, h2.versions) is False
    h3 = store.history([6], since=T - 86400)
    store.record_contacts([Contact(6, "mortgage", "lending", "web", T, "d-batch")])
    assert store.reserve([Contact(6, "mobile_app", "digital", "web", T, "d-6")], h3.versions) is False
    # all or nothing: one customer moved on -> neither customer's contact is recorded
    h4 = store.history([5, 6], since=T - 86400)
    store.record_contacts([Contact(6, "mobile_app", "digital", "web", T + 3, "d-other")])
    both = [Contact(5, "finance_course", "wellbeing", "email", T + 4, "d-5"),
            Contact(6, "finance_course", "wellbeing", "email", T + 4, "d-6b")]
    assert store.reserve(both, h4.versions) is False
    assert "finance_course" not in store.history([5, 6], since=T - 86400).contact_action


def test_release_takes_a_reservation_back(store):
    h = store.history([8], since=T - 86400)
    c = [Contact(8, "mortgage", "lending", "email", T, "d-unlogged")]
    assert store.reserve(c, h.versions)
    store.release(c)
    after = store.history([8], since=T - 86400)
    assert after.contact_row.tolist() == []
    assert after.versions[8] != h.versions.get(8, 0)  # a decision that saw the contact decides again


def _race(kind: str, where: str, worker: int, tries: int, cap: int, atomic: bool, start, out) -> None:
    """One worker of the race: read the history, decide 'contact' while under the cap (taking a
    moment, as a decision does), then reserve (atomic) or just record (the old way)."""
    import time

    s = SqlitePolicyStore(where) if kind == "sqlite" else RedisPolicyStore(REDIS_URL, prefix=where)
    won = lost = 0
    for i in range(tries):
        h = s.history([42], since=T - 86400)
        if i == 0:
            start.wait(60)  # every worker has read the empty history: the first round collides
        if h.contact_row.size >= cap:
            break
        time.sleep(0.002)
        c = [Contact(42, "mortgage", "lending", "email", T, f"w{worker}-{i}")]
        if not atomic:
            s.record_contacts(c)
            won += 1
        elif s.reserve(c, h.versions):
            won += 1
        else:
            lost += 1
    out.put((won, lost))
    s.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.parametrize("atomic", [True, False], ids=["reserve", "unchecked"])
def test_concurrent_processes_never_exceed_a_cap(kind, atomic, tmp_path):
    """Eight processes race to contact one customer under a cap of 5: with `reserve` exactly 5
    contacts land; recording without the check (the control) overshoots, so the race is real."""
    import multiprocessing as mp

    where = str(tmp_path / "state.db") if kind == "sqlite" else f"nba-test-{uuid.uuid4().hex[:8]}:policy"
    ctx = mp.get_context("fork")  # no re-import: the race starts at once
    out, start = ctx.Queue(), ctx.Barrier(8)
    procs = [ctx.Process(target=_race, args=(kind, where, w, 50, 5, atomic, start, out)) for w in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    s = SqlitePolicyStore(tmp_path / "state.db") if kind == "sqlite" else RedisPolicyStore(REDIS_URL, prefix=where)
    try:
        landed = s.history([42], since=T - 86400).contact_row.size
        if atomic:
            assert landed == 5 and sum(w for w, _ in results) == 5
            assert sum(lost for _, lost in results) > 0  # the processes did collide
        else:
            assert landed > 5
    finally:
        if kind == "redis":
            s.clear()
        s.close()
