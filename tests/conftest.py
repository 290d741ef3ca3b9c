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
