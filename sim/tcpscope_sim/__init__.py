"""tcpscope-sim: a simulated multi-node cluster on one machine (netns pods, cgroup nodes, real agents)."""
