"""Deployment tooling: Lambda layers, stack validation (not shipped in the bundle)."""
