"""Fixtures shared by the report tests: the fake server of test_report and the tiny random Llama of the
training tests (trained for real by the train-report tests)."""

from tests.report.test_report import server  # noqa: F401  (fixtures: pytest finds them by name here)
from tests.training.conftest import tiny_model  # noqa: F401
