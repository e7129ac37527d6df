"""The sample app and the `canarist demo` story."""
