"""Fixtures of the model tests: the log of a fresh run."""
import logging
import uuid
from typing import List

import pytest
from mmengine.logging import MMLogger


class _Records(logging.Handler):
    """Collects the records a logger emits."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mmlog() -> List[logging.LogRecord]:
    """The records of a fresh current ``MMLogger`` (what ``print_log(logger='current')`` and a
    new run write to)."""
    logger = MMLogger.get_instance(f'test-{uuid.uuid4().hex}')
    handler = _Records()
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
