"""tcpscope collector: receives event batches over gRPC and publishes them to Kafka."""
