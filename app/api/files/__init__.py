"""Uploaded files: JSONL datasets stored in S3."""
