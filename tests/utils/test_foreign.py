"""utils/foreign.py: foreign torch.save files are read as tensors + plain data; nothing they name is executed."""
import collections
import os
import pickle

import numpy as np
import pytest
import torch

from longtail.utils.errors import CheckpointError
from longtail.utils.foreign import ForeignObject, load_foreign_object, read_foreign_checkpoint


class Remover:
    """Unpickling this with a normal unpickler deletes ``path`` (os.remove is called by REDUCE)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.remove, (self.path,))


class Evaluator:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class WithState:
    def __init__(self):
        self.value = 3

    def __setstate__(self, state):  # pragma: no cover - must never run
        raise AssertionError("__setstate__ of a foreign class ran")


@pytest.mark.parametrize("zip_format", [True, False])
def test_payloads_become_inert_stubs(tmp_path, zip_format):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "remove": Remover(str(victim)), "eval": Evaluator(),
                "obj": WithState()}, path, _use_new_zipfile_serialization=zip_format)
    state, skipped = read_foreign_checkpoint(path)
    assert victim.exists()
    assert f"{os.remove.__module__}.remove" in skipped and "builtins.eval" in skipped
    assert any(name.endswith("WithState") for name in skipped)
    assert isinstance(state["remove"], ForeignObject) and state["remove"].args == (str(victim),)
    assert state["obj"].state == {"value": 3}
    assert torch.equal(state["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize("zip_format", [True, False])
def test_tensors_and_plain_data_round_trip(tmp_path, zip_format):
    base = torch.randn(5, 6)
    tensors = collections.OrderedDict(
        base=base, row=base[2], column=base[:, 3], transposed=base.t(), half=torch.randn(3).half(),
        bf16=torch.randn(4, dtype=torch.bfloat16), flags=torch.tensor([True, False, True]), scalar=torch.tensor(7),
        empty=torch.empty(0, 4), param=torch.nn.Parameter(torch.ones(3)), double=torch.randn(2, dtype=torch.float64))
    data = {"state_dict": tensors, "numbers": [1, 2.5, None, True], "text": "x", "raw": b"\x00\xff",
            "set": {1, 2}, "dtype": torch.float16, "np_scalar": np.float64(0.25), "np_array": np.arange(6.0).reshape(2, 3),
            "nested": {"tuple": (1, (2, 3))}}
    path = tmp_path / "plain.pth"
    torch.save(data, path, _use_new_zipfile_serialization=zip_format)
    state, skipped = read_foreign_checkpoint(path)
    assert skipped == []
    for key, value in tensors.items():
        got = state["state_dict"][key]
        assert type(got) is torch.Tensor and got.dtype == value.dtype and got.shape == value.shape
        assert torch.equal(got, value.detach()) and got.stride() == value.stride(), key
    assert state["state_dict"]["row"].untyped_storage().data_ptr() == state["state_dict"]["base"].untyped_storage().data_ptr()
    assert state["numbers"] == [1, 2.5, None, True] and state["raw"] == b"\x00\xff" and state["set"] == {1, 2}
    assert state["dtype"] is torch.float16 and state["np_scalar"] == 0.25
    assert np.array_equal(state["np_array"], np.arange(6.0).reshape(2, 3))
    assert state["nested"] == {"tuple": (1, (2, 3))}


def test_malformed_persistent_ids_and_plain_pickles(tmp_path):
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}}, handle)  # a pickle, but not a torch.save stream
    with pytest.raises(CheckpointError, match="magic number"):
        load_foreign_object(path)


def test_state_dict_must_hold_tensors(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {"w": [1, 2]}}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        read_foreign_checkpoint(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match="list"):
        read_foreign_checkpoint(path)
