"""Celery workers: training jobs."""
