"""Three tiers, marked by folder so that nobody has to remember a marker:

- `tests/unit`: no service, tiny random-weight models built in the test; `make test-fast` runs these.
- `tests/integration`: the API in this process against the real PostgreSQL, Redis and SeaweedFS.
- `tests/e2e`: the whole service as processes (Celery workers, `loraport up`, replicas, a browser) and the tests
  that show output quality on the real model.
"""

import pytest

pytest_plugins = [
    "tests.helpers.models",
    "tests.helpers.services",
    "tests.helpers.own_services",
    "tests.helpers.workers",
]
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)
