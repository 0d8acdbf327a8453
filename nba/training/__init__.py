"""Training pipelines: labelled frames from Feast, propensity, churn, CLV and uplift models, tuning, registry."""
