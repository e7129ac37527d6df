"""Where instances run: one module per provider behind the `Platform` protocol."""
