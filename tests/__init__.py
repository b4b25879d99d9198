"""Test suite; mirrors the source tree. Shared helpers live in tests/support."""
