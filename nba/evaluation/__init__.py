"""Evaluation and monitoring: drift (Evidently), uplift metrics, hold-out incrementality,
off-policy value, reports and dashboards for reviewers."""
