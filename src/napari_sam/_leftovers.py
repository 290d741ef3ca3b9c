"""The hidden files ``_labels_file`` writes beside labels, and what a killed run left of them.

While ``segment`` writes a labels file and its record, it keeps new files under temporary names and the
files being replaced under a second name (``.napari-sam-<host>-<pid>-<token>.<role>.<target>``: role
``new`` or ``old``). Ctrl-C and SIGTERM clean up; a process killed outright (SIGKILL, the out-of-memory
killer, a scheduler's hard limit) cannot, and left them behind: as large as the labels, hidden, and, where
the file system has no hard links, holding the only copy of the labels being replaced.

``sweep`` puts that right before the next run writes into the folder (``_labels_file.check_folder``), for
files of this machine whose process is gone: temporary new files are removed; a kept old file goes back to
its name when the run was killed before its new labels were in place (labels and record as they were: a
pair), and is removed when they were (what is left then is labels without a record, which a batch never
takes as done). Files of live processes and of other machines are left alone; so is everything on Windows,
where there is no safe way to ask whether a process is alive.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

PREFIX = ".napari-sam-"
_NAME = re.compile(r"^\.napari-sam-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{12}\.(?P<role>new|old)\.(?P<target>.+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


MAX_NAME = 255  # bytes of a file name on the common file systems


def fresh_name(target: Path, role: str) -> Path:
    """A name beside ``target`` for its new contents (role "new") or its previous ones (role "old"). A target
    whose name leaves no room for the machine and process gets a short name that ``sweep`` does not touch,
    as before these names (a kill then leaves it behind)."""
    token = secrets.token_hex(6)
    name = f"{PREFIX}{_host()}-{os.getpid()}-{token}.{role}.{target.name}"
    if len(os.fsencode(name)) > MAX_NAME:
        name = f"{PREFIX}{token}{target.suffix}"
    return target.with_name(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def sweep(folder: Path) -> list[str]:
    """Clean up what killed runs of this machine left in ``folder`` (module docstring); returns what was put
    back, as sentences for the user ("" when nothing was)."""
    if os.name == "nt" or not folder.is_dir():
        return []
    runs: dict[int, list[tuple[str, Path, Path]]] = {}
    host = _host()
    for f in folder.iterdir():
        m = _NAME.match(f.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid():
            runs.setdefault(int(m["pid"]), []).append((m["role"], f, folder / m["target"]))
    said = []
    for pid, files in runs.items():
        if _alive(pid):
            continue
        said += _settle(files)
    return said


def _settle(files) -> list[str]:
    """One dead run's files: the labels it was replacing first, then their record (see the module docstring)."""
    said, old_pair = [], False  # the old labels are in place (or put back): their old record goes with them
    for role, f, target in sorted(files, key=lambda t: (t[0], t[2].name.endswith(".json"))):
        try:
            if role == "new":
                f.unlink()
            elif not target.name.endswith(".json"):  # the labels being replaced
                if not target.exists():
                    os.replace(f, target)
                    old_pair = True
                    said.append(f"{target} was put back as it was before a run that was killed while replacing it")
                    continue
                old_pair = os.path.samefile(f, target)  # still the old labels: the kill came before the new ones
                f.unlink()
            elif old_pair and not target.exists():
                os.replace(f, target)
            else:  # a record in place, new labels beside the old record, or a record that had no labels
                f.unlink()
        except OSError:  # another process settled it first, or the folder changed: leave it
            continue
    return said
