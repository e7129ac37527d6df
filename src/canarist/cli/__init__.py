"""The `canarist` command line."""
