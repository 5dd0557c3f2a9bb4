"""/v1/models: base models and each organisation's fine-tuned models."""
