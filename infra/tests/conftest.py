"""Fixtures shared by the local platform's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kami_local.processes import start_moto, stop_process  # noqa: E402


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """A moto server of the module's own (moto_serve.py, as the platform runs it) on loopback."""
    proc, endpoint = start_moto(0, tmp_path_factory.mktemp("moto"))
    yield endpoint
    stop_process(proc)
