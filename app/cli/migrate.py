"""`python -m app.cli.migrate`: apply migrations, create the bucket and the bootstrap key (for deployments)."""

from app.core.bootstrap import prepare
from app.core.settings import get_settings

if __name__ == "__main__":
    created = prepare(get_settings())
    if created:
        print(f"First admin API key (shown once): {created}")
