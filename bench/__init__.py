"""tcpscope's benchmark harness: connection-churn overhead against the tools people use today,
the highest zero-loss event rate, agent CPU and memory, collector throughput and kernel-to-Kafka
latency. `python -m bench --help`; docs/benchmarks.md explains the method.
"""
