"""A model given as text that is not a registry name: the checkpoint file it names, or a
:class:`ModelError` saying what was given instead and what to give (an empty name, a web address,
a file that is not there, a folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .checkpoints import ModelError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def checkpoint_file(key: str, registry: Mapping[str, Any], unknown_name: Callable[[str], str]) -> Path:
    """The existing checkpoint file ``key`` names (``~`` expanded, not resolved).

    registry: name -> ``ModelSpec`` (its ``url`` and ``filename`` point a URL or a bare file name of a
    registry model at that name); unknown_name: the message for text that is neither a name nor a path.
    """
    if not key.strip():
        raise ModelError(f"no model given (an empty name): give a registry name ({', '.join(registry)}) "
                         "or the path of a .pth/.pt checkpoint file")
    if _URL.match(key.strip()):
        raise ModelError(_url_message(key.strip(), registry))
    path = Path(key).expanduser()
    if not path.exists():
        if "/" in key or "\\" in key or path.suffix.lower() in CHECKPOINT_SUFFIXES:
            raise ModelError(f"checkpoint file not found: {path}{_registry_file_hint(path.name, registry)}")
        raise ModelError(unknown_name(key))
    if path.is_dir():
        raise ModelError(f"{path} is a folder; give the path of a .pth/.pt checkpoint file inside it")
    return path


def _registry_name_of(filename: str, registry: Mapping[str, Any]) -> str | None:
    """The registry model whose download (URL) or cached file is called ``filename``; None if several or none."""
    if Path(filename).suffix.lower() not in CHECKPOINT_SUFFIXES:
        return None
    names = [n for n, s in registry.items()
             if s.url and filename in (Path(s.url.split("?")[0]).name, s.filename)]
    return names[0] if len(names) == 1 else None


def _registry_file_hint(filename: str, registry: Mapping[str, Any]) -> str:
    name = _registry_name_of(filename, registry)
    if name is None:
        return ""
    return (f" ({filename} is the weights file of registry model {name!r}: give the name {name} to have "
            "napari-sam download it once and cache it, or the full path of your copy)")


def _url_message(url: str, registry: Mapping[str, Any]) -> str:
    if url.lower().startswith("file://"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return f"{url} is a file URL; give the file's path instead: {url2pathname(urlparse(url).path)}"
    name = next((n for n, s in registry.items() if s.url == url), None) or _registry_name_of(
        Path(url.split("?")[0]).name, registry)
    if name is not None:  # its address, or a mirror's
        return (f"{url} is a web address, not a file: for the weights of registry model {name!r}, give the name "
                f"{name} and napari-sam downloads them once, verifies them and caches them")
    return (f"{url} is a web address, not a file: napari-sam does not download checkpoints from addresses it "
            "does not know (it could not verify them); download the file yourself (a browser, or curl -LO URL) "
            "and give its path")
