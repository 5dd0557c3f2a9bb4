"""Alembic migrations, shipped in the wheel beside `app` and `worker` so an installed (not editable) package can
migrate: `loraport migrate`."""
