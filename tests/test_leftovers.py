"""What a run killed outright (SIGKILL: no cleanup runs) left beside its labels is settled before the next run
writes there (``_leftovers.sweep``, from ``_labels_file.check_output``): temporary files removed, labels it had
moved aside put back, never an old record paired with new labels; other processes' and machines' files kept."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from napari_sam import _leftovers
from napari_sam._labels_file import check_output, write_labels_atomic
from napari_sam.io import InputError

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the sweep leaves everything alone on Windows")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _left(folder, pid, role, target, data=b"x", host=None):
    name = f"{_leftovers.PREFIX}{host or _leftovers._host()}-{pid}-{'ab' * 6}.{role}.{target}"
    (folder / name).write_bytes(data)
    return folder / name


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(_leftovers.PREFIX))


def test_names_carry_this_machine_and_process_and_parse_back(tmp_path):
    name = _leftovers.fresh_name(tmp_path / "a.tif", "old").name
    m = _leftovers._NAME.match(name)
    assert m and (m["host"], int(m["pid"]), m["role"], m["target"]) == (_leftovers._host(), os.getpid(), "old", "a.tif")


def test_a_long_labels_name_is_still_written(tmp_path):
    """Names carrying the machine and process are ~80 bytes longer than the labels' own: a labels name near
    the file systems' 255 bytes gets the short temporary names of before (not swept), not 'File name too long'."""
    out = tmp_path / ("x" * 230 + ".tif")
    write_labels_atomic(out, np.full((2, 8, 8), 4, np.uint16), {"long": True})
    assert (tifffile.imread(out) == 4).all() and _hidden(tmp_path) == []
    assert len(_leftovers.fresh_name(out, "new").name) < 255


def test_labels_moved_aside_are_put_back_before_the_output_is_checked(tmp_path, capsys):
    """Where hard links fail (FAT, some network shares) the labels being replaced were renamed aside; a kill then
    left the folder without them. The next run puts them back first, and so refuses to overwrite them."""
    pid = _dead_pid()
    old = tmp_path / "a.tif"
    tifffile.imwrite(old, np.full((4, 8, 8), 5, np.uint16))
    data = old.read_bytes()
    old.rename(tmp_path / f"{_leftovers.PREFIX}{_leftovers._host()}-{pid}-{'cd' * 6}.old.a.tif")
    _left(tmp_path, pid, "new", "a.tif", b"half-written")
    (tmp_path / "a.prompts.json").write_text('{"earlier": true}')
    with pytest.raises(InputError, match="a.tif exists; pass --overwrite"):
        check_output(tmp_path / "a.tif", overwrite=False)
    assert old.read_bytes() == data and _hidden(tmp_path) == []
    assert f"napari-sam: note: {old} was put back as it was before a run that was killed" in capsys.readouterr().err


def test_killed_before_the_new_labels_the_old_pair_stays_and_after_them_the_old_record_goes(tmp_path):
    pid = _dead_pid()
    # killed after the old record was taken away, before the new labels: the old pair again
    before = tmp_path / "before"
    before.mkdir()
    (before / "a.tif").write_bytes(b"old labels")
    os.link(before / "a.tif", before / f"{_leftovers.PREFIX}{_leftovers._host()}-{pid}-{'01' * 6}.old.a.tif")
    _left(before, pid, "old", "a.prompts.json", b'{"old": 1}')
    _left(before, pid, "new", "a.tif", b"new labels")
    _left(before, pid, "new", "a.prompts.json", b'{"new": 1}')
    assert _leftovers.sweep(before) == []
    assert {p.name: p.read_bytes() for p in before.iterdir()} == {"a.tif": b"old labels",
                                                                  "a.prompts.json": b'{"old": 1}'}
    # killed after the new labels were in place: labels without a record (never taken as done)
    after = tmp_path / "after"
    after.mkdir()
    _left(after, pid, "old", "a.tif", b"old labels")  # its old name now holds the new labels
    (after / "a.tif").write_bytes(b"new labels")
    _left(after, pid, "old", "a.prompts.json", b'{"old": 1}')
    _left(after, pid, "new", "a.prompts.json", b'{"new": 1}')
    _leftovers.sweep(after)
    assert {p.name: p.read_bytes() for p in after.iterdir()} == {"a.tif": b"new labels"}


def test_files_of_live_processes_and_other_machines_are_left_alone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        kept = [_left(tmp_path, live.pid, "new", "a.tif"), _left(tmp_path, os.getpid(), "new", "b.tif"),
                _left(tmp_path, _dead_pid(), "new", "c.tif", host="another_machine")]
        (tmp_path / ".napari-sam-1234abcd5678.tif").write_bytes(b"an older version's name")
        assert _leftovers.sweep(tmp_path) == []
        assert all(p.exists() for p in kept) and len(_hidden(tmp_path)) == 4
    finally:
        live.kill()
        live.wait()


def test_a_real_kill_between_labels_and_record_is_settled_by_the_next_write(tmp_path):
    """SIGKILL once the new labels had replaced the old ones but before the record had (as in
    test_cli_interrupted): its hidden files are gone after the next check, the old record is not put back."""
    out = tmp_path / "a.tif"
    tifffile.imwrite(out, np.full((2, 8, 8), 7, np.uint16))
    (tmp_path / "a.prompts.json").write_text('{"earlier": true}')
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from napari_sam._labels_file import write_labels_atomic
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith("a.tif"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        write_labels_atomic({str(out)!r}, np.full((2, 8, 8), 9, np.uint16), {{"new": True}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(_hidden(tmp_path)) == 3, "the old labels' and old record's second names, the new record's temporary file"
    check_output(out, overwrite=True)
    assert _hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
    assert (tifffile.imread(out) == 9).all()
    write_labels_atomic(out, np.full((2, 8, 8), 3, np.uint16), {"again": True})
    assert json.loads((tmp_path / "a.prompts.json").read_text()) == {"again": True}
