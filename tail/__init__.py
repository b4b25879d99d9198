"""The readers of the Kafka stream: tcpscope-tail (live view, --summary, --connection, the service
map) and kubectl-tcpscope. They import the shared library (tcpscope/) and nothing of the agent or
the collector; the collector never imports them (lint-imports, [tool.importlinter])."""
