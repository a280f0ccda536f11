"""The MHR rig asset is read as tensors only: its scripted code never runs, hostile files are refused."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from body4d_core.errors import MissingWeightsError, WeightsMismatchError
from body4d_core.sam3d_body.loader import load_rig, read_torchscript_tensors
from body4d_core.sam3d_body.mhr_rig import MhrRig
from body4d_core.testing.body import random_rig_tensors
from body4d_core.testing.body import MhrAssetLayout, save_mhr_asset

VICTIM_TEXT = b"the user's own file, must stay as it is\n"


class HostileRig(MhrAssetLayout):
    """A valid rig layout whose scripted forward overwrites a file of its choosing."""

    def __init__(self, tensors: dict[str, torch.Tensor], target: str) -> None:
        super().__init__(tensors)
        self.target = target

    def forward(self, shape: torch.Tensor, model_params: torch.Tensor,
                expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        written = torch.from_file(self.target, True, 16, dtype=torch.uint8).fill_(65)
        b = shape.shape[0]
        return torch.zeros(b, 1, 3) + written.sum() * 0, torch.zeros(b, 1, 8)


class NotARig(torch.nn.Module):
    """Some other scripted module that writes a file when run."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.register_buffer("w", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target, True, 16, dtype=torch.uint8).fill_(66)
        return x * self.w + written.sum() * 0


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return (torch.randn(b, 45, generator=g), torch.randn(b, 204, generator=g) * 0.3,
            torch.randn(b, 72, generator=g))


def _script_save(module: torch.nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def _old_path(path: Path):
    """What the loader did before: torch.jit.load and the file's own scripted forward (trusted test files only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _one_sentence(msg: str, path: Path) -> None:
    assert str(path) in msg and "\n" not in msg
    assert msg.endswith(".") and msg[:-1].count(". ") == 0, msg
    assert "weights_only" not in msg and "Traceback" not in msg


@pytest.fixture()
def victim(tmp_path) -> Path:
    p = tmp_path / "victim.txt"
    p.write_bytes(VICTIM_TEXT)
    return p


@pytest.fixture()
def no_jit_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")
    monkeypatch.setattr(torch.jit, "load", refuse)


def test_rig_asset_gives_the_same_outputs_as_running_the_file(tmp_path) -> None:
    t = random_rig_tensors(30, 9, hidden=12, seed=4)
    path = save_mhr_asset(t, tmp_path / "mhr_model.pt")
    x = _inputs()
    with torch.no_grad():
        ref_v, ref_s = _old_path(path)(*x)  # the file's scripted forward: the previous loading path
        rig = load_rig(path)
        v, s = rig(*x)
        nat_v, nat_s = MhrRig(t)(*x)
    assert isinstance(rig, MhrRig) and not isinstance(rig, torch.jit.ScriptModule)
    assert float((v - ref_v).abs().max()) < 1e-3 and float((s - ref_s).abs().max()) < 1e-4
    assert torch.equal(v, nat_v) and torch.equal(s, nat_s)
    assert float(ref_v.abs().mean()) > 1.0  # a real mesh, not zeros


def test_loading_never_calls_torch_jit_load(tmp_path, no_jit_load) -> None:
    path = save_mhr_asset(random_rig_tensors(12, 5, hidden=4, seed=1), tmp_path / "mhr_model.pt")
    rig = load_rig(path)
    assert rig(*_inputs(1))[0].shape == (1, 12, 3)


def test_hostile_rig_with_a_valid_layout_runs_none_of_its_code(tmp_path, victim, no_jit_load) -> None:
    t = random_rig_tensors(16, 6, hidden=8, seed=2)
    path = _script_save(HostileRig(t, str(victim)), tmp_path / "mhr_model.pt")
    rig = load_rig(path)
    v, s = rig(*_inputs())
    assert victim.read_bytes() == VICTIM_TEXT
    want_v, want_s = MhrRig(t)(*_inputs())
    assert torch.equal(v, want_v) and torch.equal(s, want_s)


def test_the_hostile_file_would_have_written_through_the_old_path(tmp_path, victim) -> None:
    t = random_rig_tensors(16, 6, hidden=8, seed=2)
    path = _script_save(HostileRig(t, str(victim)), tmp_path / "mhr_model.pt")
    _old_path(path)(*_inputs())
    assert victim.read_bytes()[:16] == b"A" * 16  # what the test above guards against


def test_foreign_scripted_module_is_refused_in_one_sentence(tmp_path, victim, no_jit_load) -> None:
    path = _script_save(NotARig(str(victim)), tmp_path / "mhr_model.pt")
    with pytest.raises(WeightsMismatchError) as err:
        load_rig(path)
    _one_sentence(str(err.value), path)
    assert "does not hold the MHR rig" in str(err.value) and "download" in str(err.value)
    assert victim.read_bytes() == VICTIM_TEXT


def test_pickled_callables_in_data_pkl_are_refused(tmp_path, victim) -> None:
    class Boom:
        def __reduce__(self):
            return (Path.write_bytes, (victim, b"pwned"))

    path = tmp_path / "mhr_model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Boom()}, protocol=2))
        zf.writestr("archive/code/__torch__.py", "def forward(self): pass\n")
    with pytest.raises(WeightsMismatchError) as err:
        load_rig(path)
    _one_sentence(str(err.value), path)
    assert "(refusing " in str(err.value)
    assert victim.read_bytes() == VICTIM_TEXT


def test_truncated_missing_and_reshaped_rigs_are_refused(tmp_path) -> None:
    t = random_rig_tensors(16, 6, hidden=8, seed=2)
    good = save_mhr_asset(t, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsMismatchError) as err:
        load_rig(cut)
    _one_sentence(str(err.value), cut)
    with pytest.raises(MissingWeightsError) as err:
        load_rig(tmp_path / "absent.pt")
    _one_sentence(str(err.value), tmp_path / "absent.pt")
    bad = save_mhr_asset(dict(t, lbs_inverse_bind_pose=torch.zeros(6, 7)), tmp_path / "bad.pt")
    with pytest.raises(WeightsMismatchError) as err:
        load_rig(bad)
    _one_sentence(str(err.value), bad)
    assert "lbs_inverse_bind_pose (6, 7)" in str(err.value)


def test_reader_returns_named_tensors_and_the_fk_level_sizes(tmp_path) -> None:
    t = random_rig_tensors(10, 7, hidden=4, seed=0)
    tensors, attrs = read_torchscript_tensors(save_mhr_asset(t, tmp_path / "r.pt"))
    assert torch.equal(tensors["character_torch.blend_shape.base_shape"], t["base_shape"])
    assert torch.equal(tensors["pose_correctives_model.pose_dirs_predictor.2.weight"], t["pose_corr_weight"])
    assert attrs["character_torch.skeleton._pmi_buffer_sizes"] == t["skel_pmi_buffer_sizes"].tolist()
