"""Releases: building them, storing them by digest, verifying and unpacking them."""
