"""The worker's entry point: `celery -A worker.app worker --queues training`."""

from app.config import get_settings
from app.log_setup import configure_logging
from worker.celery_app import make_celery

settings = get_settings()
configure_logging(settings.log_format)
celery_app = make_celery(settings)
