"""Outbound activation: the delivery worker that sends the outbox's messages through each
channel's connector (`serving/activation.yaml`) at least once, with receipts.

    decision log + outbox (one transaction) -> `nba activation run` (claim with a lease,
    deliver concurrently, settle) -> webhook | redis_stream | file | nats

`config` reads and validates `serving/activation.yaml`, `connectors` holds the connectors,
`worker` the delivery loop. Nothing in the decisioning core, the stores or serving imports
this package (the service starts the worker as a process of its own).
"""
