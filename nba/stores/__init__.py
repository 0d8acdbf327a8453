"""Durable state behind small interfaces, one backend a module: contact-policy state
(`policy_state`), the decision and outcome log (`decisions`), the event log (`events`), the
outbox (`outbox`), the preferences (`preferences`), the shared SQLite file helper (`sqlite`)
and its Postgres counterpart for the production profile (`postgres`: the DDL derived from the
records, the versioned schema of `nba stores migrate`, group commit); `backup` holds the
retention compaction and the embedded profile's backup and restore. Each store opens its
profile's backend through a factory (`open_decision_log`, `open_event_log`,
`open_preference_store`, `open_outbox`). (Not `decision_log`: that is the name of the log's folder in a work
directory, and copies of a work directory leave it out.) The tables come from `nba.records`; the decisioning core never sees a store."""
