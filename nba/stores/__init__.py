"""Durable state behind small interfaces, one backend a module: contact-policy state
(`policy_state`), the decision and outcome log (`decisions`) and the shared SQLite file
helper (`sqlite`). (Not `decision_log`: that is the name of the log's folder in a work
directory, and copies of a work directory leave it out.) The tables come from `nba.records`; the decisioning core never sees a store."""
