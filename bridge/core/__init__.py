"""The pure core: what a message means and what must happen to it, with no I/O.

One module per step of a message's path: `topics` (which topic, which error topic), `records`
(the SPEC 3 field table and the record checks), `fastcheck` (the fast path derived from that
table), `validate` (envelope and records to an outcome), `alarms`, `events` (the downstream
event), `pipeline` (the message's outcome), `plan` (outcomes to outbox rows and acks),
`digest`, `routes`, `outbox`, `encoding` (the one SPEC 7 encoder) and `masking` (SPEC 8).
The clock and ids are injected; import-linter keeps I/O out of this package.
"""
