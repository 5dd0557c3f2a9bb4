"""The Celery side of the workers: how they consume (`apps`), and the two entry points, `worker.celery.training`
(training and evaluation tasks, one per GPU or CPU host) and `worker.celery.maintenance` (the reaper and sweeps)."""
