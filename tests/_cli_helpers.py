"""Shared by the CLI tests: running ``main`` as the shell would, writing prompt tables (the stack on disk is
conftest's ``stack_files``)."""

import numpy as np

from napari_sam.cli import main
from napari_sam.synthetic import interior_point


def _write(path, text):
    path.write_text(text)
    return path


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _click_each(labels, z, path):
    """points CSV with one click per object on slice z, as objects 10, 11, ...; returns the true ids."""
    ids = _objects_on(labels, z)
    rows = ["z,y,x,positive,object"]
    for k, oid in enumerate(ids):
        r, c = interior_point(labels[z] == oid)
        rows.append(f"{z},{r},{c},1,{10 + k}")
    _write(path, "\n".join(rows) + "\n")
    return ids


def _objects_on(labels, z, n=3, min_area=150):
    ids, counts = np.unique(labels[z][labels[z] > 0], return_counts=True)
    return [int(i) for i in ids[counts >= min_area][:n]]
