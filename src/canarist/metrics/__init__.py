"""What requests did, per release: one module per provider behind the `Metrics` protocol."""
