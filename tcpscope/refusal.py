"""How the collector tells an agent that one batch can never be accepted as it is.

When the collector refuses a batch for what the batch itself is (too many events, too many bytes,
its own fields outside the bounds),
resending the same bytes would be refused forever and hold up every batch behind it. So such a
refusal names the batch in the call's trailing metadata, and the agent splits it or, when it is a
single event, drops it and counts the loss (`agent.collector_refused`), reported in a later batch.

Refusals of the stream rather than of one batch (bad token, schema version, node mismatch, Kafka
down) carry no sequence: the agent keeps its batches and retries, and its bounded buffer counts
what it has to drop meanwhile.
"""

from __future__ import annotations

# trailing metadata of a refused Collector.Stream call (gRPC metadata keys are lower case)
MD_SEQUENCE = "tcpscope-refused-sequence"
MD_REASON = "tcpscope-refused-reason"

# refusal reasons (collector_rejected_total{reason}) that a smaller batch would avoid
SPLITTABLE = frozenset({"oversized", "too_many_events"})
# a batch whose own fields are outside the bounds (docs/kafka.md, "Bounds"): dropped and counted, never resent
INVALID_BATCH = "invalid_batch"
