"""Schema revisions, applied in order by `app.core.bootstrap.migrate`."""
