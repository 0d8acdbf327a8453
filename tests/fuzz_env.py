"""Schemathesis against a served decision service, and the accounting of what it wrote.

`fuzz()` runs the `schemathesis` CLI (every check, every phase) on the service's own
`/docs.json` with a key that has every scope. Its hooks (`tests/fuzz_hooks.py`) count every
call and its status, and the rows of the decision log and the event log before and after
each call: a call answered 4xx or 5xx whose rows grew is a violation (a refused request wrote).

Two statuses are allowed beside the checks' defaults, each where a JSON schema cannot state
the service's rule: a schema-valid event more than `max_future_s` ahead of the clock (a bound
that moves with the clock) and quiet hours whose start equals their end (a relation between
two fields) are answered 400.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALSO_400 = '["2xx", "400", "401", "403", "404", "409", "429"]'
CONFIG = "".join(f"""
[[operations]]
include-path = "{path}"
include-method = "{method}"
checks.positive_data_acceptance.expected-statuses = {ALSO_400}
phases.stateful.checks.positive_data_acceptance.expected-statuses = {ALSO_400}
""" for path, method in (("/events", "POST"), ("/customers/{customer_id}/preferences", "PUT")))


@dataclass
class FuzzRun:
    returncode: int
    output: str
    requests: int = 0  # every call made, the checks' own included (`tests/fuzz_hooks.py`)
    statuses: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)  # refused calls whose log rows grew

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if int(s) >= 500)

    @property
    def failures(self) -> list[str]:
        """The failure lines of the summary (`❌ ST201 ...: 2`)."""
        return [ln.strip() for ln in self.output.splitlines() if re.search(r"❌ (ST|FAIL)\w*", ln)
                and ":" in ln]

    @property
    def generated(self) -> int:
        m = re.search(r"(\d+) generated", self.output)
        return int(m.group(1)) if m else 0


def fuzz(url: str, key: str, work: Path, out_dir: Path, *, max_examples: int, seed: int = 1, workers: int = 1,
         phases: str = "examples,coverage,fuzzing,stateful", exclude_methods: tuple[str, ...] = (),
         timeout: float = 3600) -> FuzzRun:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "schemathesis.toml").write_text(CONFIG)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "--no-color", "--config-file",
           str(out_dir / "schemathesis.toml"), "run", f"{url}/docs.json", "--url", url, "--checks", "all",
           "--max-examples", str(max_examples), "--request-timeout", "120", "--seed", str(seed), "--workers", str(workers),
           "--phases", phases, *(a for m in exclude_methods for a in ("--exclude-method", m)),
           "-H", f"Authorization: Bearer {key}"]
    import os

    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "NBA_FUZZ_WORK": str(work),
           "NBA_FUZZ_REPORT": str(out_dir / "calls.json"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                          cwd=str(out_dir))
    calls = json.loads((out_dir / "calls.json").read_text()) if (out_dir / "calls.json").is_file() else {}
    return FuzzRun(proc.returncode, proc.stdout + proc.stderr, calls.get("calls", 0),
                   calls.get("statuses", {}), calls.get("violations", []))
