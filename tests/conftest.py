"""Shared test helpers: the shipped embedded model, loaded once."""

from pathlib import Path

import pytest

import napari_sam

EMBEDDED = Path(napari_sam.__file__).parent / "weights" / "embedded.pt"
needs_embedded = pytest.mark.skipif(not EMBEDDED.exists(), reason=f"embedded weights not in this checkout ({EMBEDDED})")


@pytest.fixture(scope="session")
def embedded_model():
    if not EMBEDDED.exists():
        pytest.skip(f"embedded weights not in this checkout ({EMBEDDED})")
    return napari_sam.load_model("embedded", device="cpu")


@pytest.fixture(autouse=True)
def _workers_finish_before_the_next_test():
    """Widgets start background workers (napari's thread_worker, on Qt's global thread pool); a worker
    still running when the interpreter exits warned through deleted Qt signals and aborted the process
    (seen running tests/test_widget.py alone). Wait for them after every test that used Qt."""
    yield
    import sys

    if "qtpy" in sys.modules:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(30000)
