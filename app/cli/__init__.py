"""Command-line interface: `loraport up` and friends."""
