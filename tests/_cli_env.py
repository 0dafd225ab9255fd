"""What the CLI and bench tests share: a skip mark for torchvision, and a fixture
that runs them on the reference ops where the extension is not built (import
`kernels_or_reference` into a test module to use it there, autouse)."""
import importlib.util

import pytest

from lthfast import _ops

needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="needs torchvision")


@pytest.fixture(autouse=True)
def kernels_or_reference(monkeypatch):
    if not _ops.available():
        monkeypatch.setenv("LTHFAST_REFERENCE", "1")
