"""The evaluation report of a fine-tune: held-out answers of the base and the tuned model, scored."""
