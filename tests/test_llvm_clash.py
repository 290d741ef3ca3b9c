"""A napari viewer whose OpenGL driver loaded LLVM (Mesa: llvmpipe on Xvfb, radeonsi) must survive the widget
loading a model afterwards (``_session.import_torch``): torchvision's import pulls in Triton, whose own LLVM
crashes the process (segfault). Until session 9 the guard stood aside when torch was already imported (by
another plugin, or a test module) and the process died."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = """
import sys
import napari
viewer = napari.Viewer(show=False)
llvm = any("libLLVM" in line for line in open("/proc/self/maps"))
import torch  # another plugin imported torch, not torchvision
from napari_sam._qt._session import import_torch, load_model_cached
import_torch()  # what the widget does before it loads a model
load_model_cached("embedded", "cpu")
print("LLVM" if llvm else "no LLVM", "triton kept out" if sys.modules.get("triton", 0) is None else "triton loaded")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.environ.get("DISPLAY"),
                    reason="needs Linux and a display (CI: Xvfb)")
def test_loading_a_model_after_the_viewer_opened_and_torch_was_imported_does_not_crash():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.strip().splitlines()[-1]
    # with an LLVM in the process Triton must have been kept out; without one it may load
    assert out in ("LLVM triton kept out", "no LLVM triton loaded", "no LLVM triton kept out"), out
