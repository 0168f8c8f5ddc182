"""Fixtures shared by the report tests: the fake server of test_report (the tiny random Llama that the
train-report tests train for real is tests/conftest.py's ``tiny_model``)."""

from tests.report.test_report import server  # noqa: F401  (fixtures: pytest finds them by name here)
