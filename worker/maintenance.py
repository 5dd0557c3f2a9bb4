"""The maintenance worker's entry point:
`celery -A worker.maintenance worker --queues maintenance --pool solo --beat`. One per deployment."""

from app.config import get_settings
from app.log_setup import configure_logging
from worker.celery_app import make_maintenance_celery

settings = get_settings()
configure_logging(settings.log_format)
celery_app = make_maintenance_celery(settings)
