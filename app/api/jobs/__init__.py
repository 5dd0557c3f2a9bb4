"""Fine-tuning jobs: creation, state, events, cancellation."""
