"""Shared test helpers: the shipped embedded model, loaded once."""

import contextlib
import functools
import http.server
import threading
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


@contextlib.contextmanager
def serve_on_loopback(handler, tmp_path, monkeypatch):
    """Run an ``http.server`` handler on 127.0.0.1 (a free port) for the block; yields its base URL.
    Proxies are bypassed for it and $NAPARI_SAM_CACHE is tmp_path/"cache"."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/"served"; yields (base_url, folder, requests_seen)."""
    folder = tmp_path / "served"
    folder.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            seen.append(self.path)
            super().do_GET()

    with serve_on_loopback(functools.partial(Handler, directory=str(folder)), tmp_path, monkeypatch) as url:
        yield url, folder, seen


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    """(folder, SyntheticStack): a (12, 128, 128) stack and its slice 6 as TIFFs, for the CLI tests."""
    import tifffile

    from napari_sam.synthetic import make_stack

    d = tmp_path_factory.mktemp("cli")
    st = make_stack((12, 128, 128), seed=900_500, radius_range=(10, 22), density=0.35)
    tifffile.imwrite(d / "stack.tif", st.image)
    tifffile.imwrite(d / "slice.tif", st.image[6])
    return d, st
