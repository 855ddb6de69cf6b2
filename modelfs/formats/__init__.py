"""Formats: what users and registries send, parsed and validated (pure)."""
