"""Shared fixtures: most end-to-end tests run under every execution mode (differential)."""

import pytest

EXECUTION_MODES = ["direct", "bt"]


@pytest.fixture(params=EXECUTION_MODES)
def mode(request):
    return request.param
