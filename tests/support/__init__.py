"""Helpers shared by the test suites; the database fixtures themselves live in tests/conftest.py."""
