"""`python -m canarist` is the `canarist` command."""

from canarist.cli.main import main

main()
