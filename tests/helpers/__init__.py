"""What the integration and end-to-end tests share: the real services, workers, datasets and waits."""
