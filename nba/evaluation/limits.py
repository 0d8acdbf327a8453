"""The `evaluation:` limits of evaluation/gates.yaml that incrementality, off-policy and policy
value estimates are flagged against (too few units per arm, too small an effective sample...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nba.config import gates_path, load_gates
from nba.errors import ConfigError
from nba.settings import Settings

if TYPE_CHECKING:
    from nba.config import EvaluationLimits


def evaluation_limits(settings: Settings) -> EvaluationLimits:
    """The `evaluation:` section of the gates file (a clear error if it is missing)."""
    path = gates_path(settings.home)
    limits = load_gates(path).evaluation
    if limits is None:
        raise ConfigError(f"{path}: no 'evaluation:' section (min_arm_size, min_responses, min_rows, min_ess, "
                          "max_unsupported_share)")
    return limits
