"""Atomic checkpoint writes, weights_only loads and clear errors."""
import os
import pickle

import pytest
import torch

from longtail.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, strip_prefixes


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {"name": "a"}, "epoch": 1}, path)

    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial garbage")  # half-written file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {"name": "a"}, "epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp files left behind


class ConfigParser:  # the original repos pickle their ConfigParser object into checkpoints
    pass


def test_pickled_objects_are_refused_with_advice(tmp_path):
    path = tmp_path / "old.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "config": ConfigParser()}, handle)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def test_missing_truncated_and_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = save_checkpoint({"model": {}, "config": {}}, tmp_path / "a.pth")
    (tmp_path / "b.pth").write_bytes(good.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "b.pth")
    torch.save({"weights": 1}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this framework"):
        load_checkpoint(tmp_path / "c.pth")


def test_strip_prefixes():
    assert list(strip_prefixes({"module._orig_mod.a.b": 1, "c": 2})) == ["a.b", "c"]
