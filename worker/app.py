"""The worker's entry point: `celery -A worker.app worker --queues training`."""

from app.config import get_settings
from worker.celery_app import make_celery

celery_app = make_celery(get_settings())
