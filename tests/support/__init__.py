"""Helpers shared by tests, benchmarks and the simulator tests: traffic, cgroups, netns, brokers."""
