"""Prefect tasks: one shard of work each, Parquet I/O, retries. Flows call these; they call detection/explainers."""
