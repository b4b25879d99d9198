"""tcpscope per-node agent: eBPF programs on TCP tracepoints -> enrichment -> stdout or collector."""
