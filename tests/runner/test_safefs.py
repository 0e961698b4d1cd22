"""runner.safefs.OutputTree: no write below an output folder follows a symbolic link out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.safefs import OutputTree, UnsafePath


@pytest.fixture
def tree(tmp_path: Path) -> OutputTree:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("precious")
    return OutputTree(tmp_path / "root")


def _outside(tree: OutputTree) -> dict[str, str]:
    folder = tree.root.parent / "outside"
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_writes_create_folders_and_replace_files(tree: OutputTree) -> None:
    assert tree.write_text("a/b/c.txt", "one") == tree.root / "a" / "b" / "c.txt"
    tree.write_bytes("a/b/c.txt", b"two")
    assert (tree.root / "a" / "b" / "c.txt").read_bytes() == b"two"
    assert tree.mkdir("d/e") == tree.root / "d" / "e" and (tree.root / "d" / "e").is_dir()
    assert sorted(p.name for p in (tree.root / "a" / "b").iterdir()) == ["c.txt"]  # no temporary left


def test_symlinked_folder_below_the_root_is_refused(tree: OutputTree) -> None:
    (tree.root / "train").symlink_to(tree.root.parent / "outside", target_is_directory=True)
    for write in (lambda: tree.write_text("train/x.txt", "x"), lambda: tree.write_text("train/deep/x.txt", "x"),
                  lambda: tree.mkdir("train/sub"), lambda: tree.copy_from(tree.root.parent / "outside" / "victim.txt",
                                                                          "train/victim.txt")):  # fmt: skip
        with pytest.raises(UnsafePath, match=f"refused to write {tree.root / 'train'}: train is a symbolic link"):
            write()
    assert _outside(tree) == {"victim.txt": "precious"}


def test_symlinked_file_is_refused_and_its_target_kept(tree: OutputTree) -> None:
    (tree.root / "results.json").symlink_to(tree.root.parent / "outside" / "victim.txt")
    with pytest.raises(UnsafePath, match="results.json is a symbolic link"):
        tree.write_text("results.json", "overwritten")
    assert _outside(tree) == {"victim.txt": "precious"}
    assert sorted(p.name for p in tree.root.iterdir()) == ["results.json"]


def test_hard_link_is_replaced_not_written_through(tree: OutputTree) -> None:
    os.link(tree.root.parent / "outside" / "victim.txt", tree.root / "best.pth")
    tree.write_bytes("best.pth", b"weights")
    assert (tree.root / "best.pth").read_bytes() == b"weights"
    assert _outside(tree) == {"victim.txt": "precious"}


def test_failed_write_keeps_the_old_file_and_no_temporary(tree: OutputTree) -> None:
    tree.write_text("last.pth", "old")
    with pytest.raises(RuntimeError, match="disk full"), tree.create("last.pth") as fh:
        fh.write(b"half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tree.root.iterdir()) == ["last.pth"]
    assert (tree.root / "last.pth").read_text() == "old"


@pytest.mark.parametrize("rel", ["../outside/x.txt", "a/../../x.txt", "/etc/x.txt", ""])
def test_paths_leaving_the_root_are_refused(tree: OutputTree, rel: str) -> None:
    with pytest.raises(UnsafePath, match="not a plain relative path"):
        tree.write_text(rel, "x")
