"""tcpscope: shared event model, wire conversion and rendering used by the agent, collector and tail."""
