"""Versioned Parquet buffer snapshots and the chunk-window dataset built on them."""
