"""Replicas: engines that share one contact-policy state never exceed a cap together.

Two engines stand for two replicas of the service (each its own stores' connections) over one
Redis policy state and one log; sixteen threads decide for one customer on both at once. Every
cap of the catalog holds, and the contact state agrees with the log: each logged decision
that showed an action is a contact, and nothing else is."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from nba.records import NO_ACTION
from nba.settings import Settings
from nba.stores.decisions import read_log
from tests.serving_env import DECISION_EPOCH

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REDIS_URL = "redis://127.0.0.1:6379/12"  # this module's Redis database (HELPERS.md)


def _replica(bank: Settings, work: Path, prefix: str):
    from nba.serving.bundle import load_engine

    if not work.exists():
        work.mkdir()
        for name in ("sim", "feature_repo", "bundle", "bentoml"):
            (work / name).symlink_to(bank.work / name, target_is_directory=True)
    private = bank.model_copy(update={"work_dir": work, "policy_store": "redis", "redis_url": REDIS_URL,
                                      "redis_prefix": prefix})
    return private, load_engine(private)


@pytest.fixture
def replicas(customers_bank: Settings, tmp_path):
    prefix = f"nba-replicas-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "var"  # one log, as the replicas share Postgres in production
    one = _replica(customers_bank, work, prefix)
    two = _replica(customers_bank, work, prefix)
    yield one, two
    one[1].policy.clear()


def test_sixteen_clients_on_two_replicas_never_exceed_a_cap(replicas):
    from nba.serving.engine import DecisionRequest

    (settings, e1), (_, e2) = replicas
    cat = e1.catalog
    t = float(DECISION_EPOCH)
    # a customer the bank would e-mail (consent, an eligible action)
    cid = next(c for c in range(1, 400)
               if e1.decide([DecisionRequest(customer_id=c, channel="email", timestamp=t)], preview=True)[0]["actions"])
    answers: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        eng = e1 if i % 2 else e2
        for j in range(5):
            try:
                out = eng.decide([DecisionRequest(customer_id=cid, channel="email", timestamp=t + i * 0.001 + j)])
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(exc)
                return
            with lock:
                answers.extend(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    assert len(answers) == 80
    shown = [(a["decision_id"], a["actions"][0]["action_id"]) for a in answers if a["actions"]]
    email_cap = next(c for c in cat.channels if c.name == "email").caps[0]
    assert 1 <= len(shown) <= email_cap.count  # at most 4 e-mails per 30 days, whoever decides
    per_action: dict[str, int] = {}
    for _, a in shown:
        per_action[a] = per_action.get(a, 0) + 1
    for a, n in per_action.items():  # the default policy: at most 1 per 7 days per action
        assert n <= min(c.count for c in next(x for x in cat.actions if x.id == a).caps), (a, n)
    # the contact state agrees with the log
    h = e1.policy.history([cid], since=t - 86400)
    assert sorted(zip(h.contact_action, strict=True)) == sorted((a,) for _, a in shown)
    log = read_log(settings.decision_log_dir).decisions
    mine = log[log["customer_id"] == cid]
    assert len(mine) == 80
    assert set(mine["decision_id"]) == {a["decision_id"] for a in answers}
    assert int(np.sum(mine["action_id"] != NO_ACTION)) == len(shown)
