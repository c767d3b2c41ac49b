"""``python -m corral`` runs the ``corral`` command."""

from .cli.main import main

main()
