"""Testing an app: ``LocalApp`` serves it on the embedded runtime for a plain test."""

from workers.testing import LocalApp, NoAnswer

__all__ = ["LocalApp", "NoAnswer"]
