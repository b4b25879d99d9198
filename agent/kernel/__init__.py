"""Everything that depends on the running kernel: tracepoint formats, BTF offsets, headers, loading."""
