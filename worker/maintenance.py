"""The maintenance worker's entry point:
`celery -A worker.maintenance worker --queues maintenance --pool solo --beat`. One per deployment."""

from app.config import get_settings
from worker.celery_app import make_maintenance_celery

celery_app = make_maintenance_celery(get_settings())
