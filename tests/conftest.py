"""Fixtures shared by the whole suite: a throwaway PostgreSQL server (tests/_postgres.py)."""

pytest_plugins = ["tests._postgres"]
