"""How traffic is split: one module per provider behind the `Router` protocol."""
