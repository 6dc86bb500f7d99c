"""Offline-capable preparation of what a run consumes: the GSM8K parquet and the demo model."""
