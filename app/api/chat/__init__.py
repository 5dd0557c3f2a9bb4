"""/v1/chat/completions: a base model plus the adapter its model id names."""
