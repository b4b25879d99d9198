"""Generated protobuf/gRPC code for the tcpscope.v1 schema (built from proto/ by scripts/genproto.py)."""
