"""`/v1/evaluations` (extension): the held-out evaluation of any model against a baseline, on any uploaded file."""
