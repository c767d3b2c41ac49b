"""Declared models: their specs, versions and the default-version rule."""
