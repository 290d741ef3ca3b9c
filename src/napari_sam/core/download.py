"""Download a registry model's weights into the cache folder, verified, with errors for people.

``download(name, url, known_hash, target, progress)`` is what ``models.fetch_checkpoint``
runs when the cached file is missing or does not match its checksum. The file is
written to a private ``.part`` file beside the target and renamed over it only
once its checksum matched, so a partial or wrong file is never taken as the
model; whatever goes wrong, the ``.part`` file is deleted. ``.part`` files left
by a process that was killed (no Python cleanup ran) are deleted by the next
load of the same model once they are an hour old. Processes that want the
same model at once download it once: the others wait for its lock file, then
find the verified file.

Every failure is a :class:`ModelError` of one line that says what went wrong
(no connection, an HTTP error, a cut-short transfer, a web page instead of the
weights, a cache folder that cannot be written, a full disk) and what to do,
including the two ways to work without a download: the embedded model and a
checkpoint path.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .checkpoints import ModelError, sha256_file

STALE_PART_SECONDS = 3600  # an active download writes every chunk, and gives up after 60 s without data


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$NAPARI_SAM_CACHE`` (made absolute), else the platform cache."""
    env = os.environ.get("NAPARI_SAM_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    import pooch

    return Path(pooch.os_cache("napari-sam"))


def file_hash(path: Path, alg: str) -> str:
    if alg == "sha256":
        return sha256_file(path)  # remembered, so load_model does not hash the file twice
    import pooch

    return pooch.file_hash(str(path), alg=alg)


def alternatives(url: str) -> str:
    return (
        "To work without this download, use the embedded model, which ships with napari-sam (load_model('embedded'), "
        f"--model embedded), or download {url} yourself and give its path instead of the name "
        "(load_model(PATH), --model PATH, or the widget's 'from file…')."
    )


def _cache_error(folder: Path, name: str, url: str, reason: str) -> ModelError:
    return ModelError(
        f"cannot save model {name!r} in the cache folder {folder}: {reason}. Set the environment variable "
        f"NAPARI_SAM_CACHE to a folder you can write to. {alternatives(url)}"
    )


def _make_folder(folder: Path, name: str, url: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise _cache_error(folder, name, url, "it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cache_error(folder, name, url, e.strerror or str(e)) from None


def _new_part(folder: Path, name: str, url: str, filename: str) -> str:
    """A new private ``.part`` file in ``folder``; stale ones of this model removed."""
    try:
        fd, part = tempfile.mkstemp(dir=folder, prefix=filename + ".", suffix=".part")
        os.close(fd)
    except OSError as e:
        raise _cache_error(folder, name, url, e.strerror or str(e)) from None
    remove_stale_parts(folder, filename, keep=part)
    return part


def remove_stale_parts(folder: Path, filename: str, keep: str = "") -> None:
    """Delete ``filename``'s ``.part`` files in ``folder`` not written to for an hour (a killed download's)."""
    now = time.time()
    for old in folder.glob(f"{filename}.*.part"):
        try:
            if str(old) != keep and now - old.stat().st_mtime > STALE_PART_SECONDS:
                old.unlink()
        except OSError:  # another process removed or renamed it meanwhile
            pass


def _looks_like_html(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1024).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in head


def _download_error(e: BaseException, name: str, url: str, part: str) -> ModelError:
    import requests

    what = f"could not download model {name!r} from {url}"
    if isinstance(e, requests.HTTPError) and e.response is not None:
        r = e.response
        return ModelError(
            f"{what}: the server answered {r.status_code} {r.reason} (nothing was saved). If this persists, the file "
            f"may have moved or need a login. {alternatives(url)}"
        )
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        got = os.path.getsize(part) if os.path.exists(part) else 0
        return ModelError(
            f"{what}: the connection broke after {got / 1e6:.1f} MB; the partial file was deleted and nothing was "
            f"cached. Run again to download it from the start. {alternatives(url)}"
        )
    if isinstance(e, requests.Timeout) and not isinstance(e, requests.ConnectionError):
        return ModelError(
            f"{what}: the server stopped sending data for 60 s; the partial file was deleted. Try again later. "
            f"{alternatives(url)}"
        )
    if isinstance(e, requests.RequestException):
        host = requests.utils.urlparse(url).hostname
        return ModelError(
            f"{what}: no connection to {host} ({type(e).__name__}: are you offline, or behind a proxy or firewall? "
            f"Set HTTPS_PROXY if your network needs a proxy). {alternatives(url)}"
        )
    # requests' errors are OSErrors too: what is left is writing the file (a full disk, a quota)
    return ModelError(
        f"could not save model {name!r} in the cache folder {Path(part).parent}: "
        f"{getattr(e, 'strerror', None) or e}. The partial file was deleted; free some space or set the "
        f"environment variable NAPARI_SAM_CACHE to a folder on another disk. {alternatives(url)}"
    )


@contextmanager
def _one_at_a_time(folder: Path, filename: str):
    """Hold ``folder/filename.lock`` while downloading, so that processes asking for one model at once (a job
    array on a cluster, two napari windows) download it once. The lock file is removed on release (a process
    that locked a removed one tries again); where ``flock`` is missing (Windows) or refused (some network
    file systems) each process downloads, which is still correct."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path, f = folder / f"{filename}.lock", None
    try:
        for _ in range(100):
            f = open(path, "a")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"napari-sam: waiting for another process downloading {filename} into {folder}",
                      file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    break  # locked, and still the lock file
            except FileNotFoundError:
                pass
            f.close()
            f = None
    except OSError:  # no lock (e.g. ENOLCK on a network file system): download anyway
        if f is not None:
            f.close()
            f = None
    try:
        yield
    finally:
        if f is not None:
            with suppress(OSError):
                os.remove(path)
            f.close()  # releases the lock


class _TerminalBar:
    """A tqdm bar on stderr that appears once the server has answered (pooch sets ``total`` then): an
    unreachable server prints no empty bar before its message."""

    def __init__(self, desc: str):
        self.desc, self._bar = desc, None

    def __bool__(self) -> bool:  # pooch uses the bar only if it is truthy
        return True

    @property
    def total(self):
        return None if self._bar is None else self._bar.total

    @total.setter
    def total(self, total) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, ncols=79, unit="B", unit_scale=True, leave=True, desc=self.desc)
        self._bar.total = total

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def download(name: str, url: str, known_hash: str, target: Path, progress: Any = True) -> Path:
    """Download ``url`` to ``target`` through a ``.part`` file, verified against ``known_hash`` ("alg:hex")."""
    alg, _, expected = known_hash.partition(":")
    _make_folder(target.parent, name, url)
    with _one_at_a_time(target.parent, target.name):
        if target.is_file() and file_hash(target, alg) == expected:  # another process has just downloaded it
            return target
        part = _new_part(target.parent, name, url, target.name)
        try:
            _download_verified(name, url, alg, expected, part, target, progress)
        finally:
            if os.path.exists(part):
                os.remove(part)
    return target


def _download_verified(name: str, url: str, alg: str, expected: str, part: str, target: Path, progress: Any) -> None:
    """Download into ``part``, check its checksum, then rename it to ``target`` (the only way a file gets there)."""
    import pooch

    # our own bar for progress=True, so that a failed download closes it too (pooch's stays half drawn)
    bar = _TerminalBar(name) if progress is True else progress
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=1 << 20, timeout=60)
    try:
        downloader(url=url, output_file=part, pooch=None)
    except OSError as e:  # requests' connection, timeout and HTTP errors, and failed writes
        raise _download_error(e, name, url, part) from None
    finally:
        if bar is not progress:
            bar.close()
    actual = file_hash(Path(part), alg)
    if actual != expected:
        if _looks_like_html(part):
            raise ModelError(
                f"could not download model {name!r} from {url}: the server sent a web page "
                f"({os.path.getsize(part)} bytes of HTML) instead of the weights, e.g. a login, proxy or "
                f"firewall page; it was deleted and nothing was cached. Open the address in a browser to see "
                f"what it asks. {alternatives(url)}"
            )
        raise ModelError(
            f"checksum mismatch for model {name!r} downloaded from {url}: expected {alg} {expected}, "
            f"got {actual}. The corrupted download was deleted and nothing was cached. Try again (a "
            f"download cut short or altered by a proxy does this); if it keeps failing, the file at that "
            f"address has changed: download it yourself and give its path instead of the name "
            f"(load_model(PATH), --model PATH, or the widget's 'from file…')."
        )
    os.chmod(part, 0o644)  # mkstemp made it private; a cache is shareable
    os.replace(part, target)
