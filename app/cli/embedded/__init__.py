"""Real PostgreSQL, Redis and S3 servers run as children, for `loraport up` and the tests."""
