"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz_hooks) for `tests/fuzz_env.py`: before
every call the rows of the decision log and the event log are counted, after it again; a call
answered 4xx or 5xx whose rows grew wrote to a log it was refused. Every call's status and
every such violation are written as JSON to NBA_FUZZ_REPORT when the run ends."""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import schemathesis

WORK = Path(os.environ.get("NBA_FUZZ_WORK", "var"))
TABLES = {"decision_log/log.db": ("decisions", "candidates", "filtered", "outcomes", "outbox"),
          "events/events.db": ("events",)}
STATE: dict[str, Any] = {"calls": 0, "statuses": {}, "violations": [], "before": {}}


def counts() -> dict[str, int]:
    out: dict[str, int] = {}
    for db, tables in TABLES.items():
        path = WORK / db
        if not path.is_file():
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            for t in tables:
                out[t] = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
        except sqlite3.OperationalError:  # a table not made yet
            pass
        finally:
            conn.close()
    return out


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    STATE["before"] = counts()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    STATE["calls"] += 1
    code = str(response.status_code)
    STATE["statuses"][code] = STATE["statuses"].get(code, 0) + 1
    if response.status_code >= 400:
        after = counts()
        grew = {t: after[t] - STATE["before"].get(t, 0) for t in after if after[t] > STATE["before"].get(t, 0)}
        if grew:
            STATE["violations"].append({"method": case.method, "path": case.path, "status": response.status_code,
                                        "grew": grew})


@atexit.register
def _report() -> None:
    target = os.environ.get("NBA_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps({k: v for k, v in STATE.items() if k != "before"}))
