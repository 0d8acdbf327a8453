"""Durable state behind small interfaces, one backend a module: contact-policy state
(`policy_state`), the decision and outcome log (`decision_log`) and the shared SQLite file
helper (`sqlite`). The tables come from `nba.records`; the decisioning core never sees a store."""
