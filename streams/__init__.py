"""Spark Structured Streaming jobs: batch ingest, continuous scoring, labeling hand-off."""
