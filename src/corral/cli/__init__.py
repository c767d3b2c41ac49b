"""The ``corral`` command."""
