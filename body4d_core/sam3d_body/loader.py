"""Safe loading of the official SAM-3D-Body checkpoint folder.

Layout (``models/sam3d_body/sam-3d-body-dinov3/``): ``model.ckpt`` (a PyTorch-Lightning
checkpoint whose ``state_dict`` holds the network), ``model_config.yaml`` and
``assets/mhr_model.pt`` (the TorchScript MHR rig). The checkpoint is read with
``torch.load(weights_only=True)``. Lightning checkpoints may also pickle non-tensor objects (the
yacs config in ``hyper_parameters``, numpy scalars in loop state) that the weights-only unpickler
rejects; such files are then read by an allow-list unpickler that calls only torch's tensor
rebuild helpers and turns every other global into an inert placeholder (no code from the file is
ever run). Keys are checked strictly. The rig asset is a TorchScript archive: only its tensors
are read (``read_torchscript_tensors``) into our own ``MhrRig``; its scripted code is never loaded.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import MissingWeightsError, WeightsMismatchError
from ..weights import resolve_model_dir
from .config import Sam3dBodyConfig, config_from_yaml
from .mhr_rig import MhrRig, rig_from_torchscript_tensors
from .model import Sam3dBody

log = logging.getLogger(__name__)

CKPT, CONFIG, RIG = "model.ckpt", "model_config.yaml", "assets/mhr_model.pt"
# Rig state the training code saved inside the heads; the rig itself comes from assets/mhr_model.pt.
IGNORED_PREFIXES = ("head_pose.mhr.", "head_pose_hand.mhr.", "mhr.")
# Buffers whose values we can derive when a checkpoint lacks them.
OPTIONAL_SUFFIXES = ("rope_embed.periods", "attn.qkv.bias_mask",
                     # absent from the released model.ckpt by its published tensor count (1127); unused here
                     "encoder.mask_token", "hand_pose_comps_ori")
RESHAPEABLE = ("backbone.encoder.mask_token", "backbone.encoder.cls_token")


class _Inert(dict):
    """Placeholder for any non-tensor object pickled in a checkpoint: stores its state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


_DTYPES = {f"{n}Storage": d for n, d in (
    ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool))}
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch", "Size"): torch.Size,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint calling only tensor-rebuild helpers; every other global is inert."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def _known(self, module: str, name: str) -> Any:
        """The tensor-rebuild helper or storage type named, or None."""
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        return None

    def find_class(self, module: str, name: str) -> Any:
        known = self._known(module, name)
        return _Inert if known is None else known

    def persistent_load(self, pid: Any) -> Any:
        ok = (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
              and isinstance(pid[2], str) and pid[2].isalnum())
        if not ok:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        raw = self.archive.read(f"{self.prefix}/data/{pid[2]}")
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=pid[1].dtype, _internal=True)


def _load_allow_list(path: Path) -> Any:
    """Fallback for checkpoints the weights-only unpickler refuses (e.g. pickled dict subclasses)."""
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return _AllowListUnpickler(zf.read(pkl), zf, pkl[: -len("/data.pkl")]).load()


def _load(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(err):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor state dict of a (Lightning) checkpoint, loaded without running pickled code."""
    path = Path(path)
    try:
        try:
            obj = _load(path)
        except pickle.UnpicklingError:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            log.info("checkpoint %s pickles non-tensor objects (%s); reading it with an allow-list unpickler "
                     "that turns them into inert placeholders", path.name, ", ".join(names[:5]))
            obj = _load_allow_list(path)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or foreign files
        raise WeightsMismatchError(f"cannot read {path} ({_short(err)}); delete it and download it again with: "
                                   f"python -m body4d_core setup --models sam3d_body.") from err
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsMismatchError(f"{path} holds no tensor state dict; use facebook/sam-3d-body-dinov3's model.ckpt.")
    return dict(sd)


def _default_buffer(model: Sam3dBody, key: str, like: torch.Tensor) -> torch.Tensor:
    """Value of an optional buffer a checkpoint may omit (RoPE periods, qkv key-bias mask, mask token, comps_ori)."""
    cfg = model.cfg
    if key.endswith("encoder.mask_token"):
        return torch.zeros_like(like, device="cpu")
    if key.endswith("hand_pose_comps_ori"):
        return torch.eye(like.shape[0])
    if key.endswith("rope_embed.periods"):
        hd = cfg.vit_dim // cfg.vit_heads
        return cfg.rope_base ** (2 * torch.arange(hd // 4, dtype=torch.float32) / (hd // 2))
    d = cfg.vit_dim
    return torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)]).to(like.dtype)


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo wrappers a training run may add: torch.compile's ``_orig_mod.`` and a ``model.`` prefix."""
    sd = {k.replace("_orig_mod.", ""): v for k, v in sd.items()}
    if not any(k.startswith("backbone.") for k in sd) and any(k.startswith("model.backbone.") for k in sd):
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
    return sd


def _fix_optional(model: Sam3dBody, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in _normalise_keys(sd).items() if not k.startswith(IGNORED_PREFIXES)}
    own = model.state_dict()
    for k, v in own.items():
        if k not in sd and k.endswith(OPTIONAL_SUFFIXES):
            sd[k] = _default_buffer(model, k, v)
        elif k in RESHAPEABLE and k in sd and sd[k].shape != v.shape and sd[k].numel() == v.numel():
            sd[k] = sd[k].reshape(v.shape)
    return sd


def check_state_dict(model: Sam3dBody, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Raise WeightsMismatchError naming missing, unexpected and mis-shaped keys; return the usable dict."""
    sd = _fix_optional(model, sd)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {head(shapes)}")
        raise WeightsMismatchError(f"{source} does not match the SAM-3D-Body architecture of its model_config.yaml "
                                   f"({'; '.join(parts)}); use the files of facebook/sam-3d-body-dinov3 unchanged "
                                   f"(model.ckpt, model_config.yaml, assets/mhr_model.pt) in one folder.")
    return sd


def _rig_sizes(cfg: Sam3dBodyConfig, sd: dict[str, torch.Tensor]) -> Sam3dBodyConfig:
    """Take the MHR mesh sizes from the checkpoint's head buffers (so LODs other than 1 load too)."""
    try:
        j = int(sd["head_pose.joint_rotation"].shape[0])
        f = int(sd["head_pose.faces"].shape[0])
        v = int(sd["head_pose.keypoint_mapping"].shape[1]) - j
    except KeyError:
        return cfg
    return cfg.replace(num_joints=j, num_faces=f, num_verts=v)


class _ScriptObject:
    """A TorchScript module or object from data.pkl: only its pickled attributes, none of its code."""

    qualname = ""

    def __new__(cls, *args: Any) -> "_ScriptObject":
        obj = super().__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _script_class(module: str, name: str) -> type:
    """A stand-in class for a ``__torch__`` class that records its pickled state (its code is never read)."""
    return type(name, (_ScriptObject,), {"qualname": f"{module}.{name}"})


_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


class _TorchScriptDataUnpickler(_AllowListUnpickler):
    """Reads a TorchScript archive's data.pkl: tensors, plain values and module attribute dicts, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        known = self._known(module, name)
        if known is not None:
            return known
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag: value
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor], attrs: dict[str, Any], depth: int = 0) -> None:
    """Dotted names of every tensor and plain attribute below a module object's pickled state."""
    if depth > 32:
        raise pickle.UnpicklingError("module tree nested too deeply")
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, name + ".", tensors, attrs, depth + 1)
        elif isinstance(value, (int, float, bool, str, list, tuple)) or value is None:
            attrs[name] = value


def read_torchscript_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, plain attributes) by dotted module name from a TorchScript .pt, never running or reading its code.

    A TorchScript file is a zip of ``data.pkl`` (the module tree's attributes), ``data/N`` (tensor
    bytes) and ``code/`` (the scripted methods); only the first two are read, by an unpickler that
    builds tensors, plain values and attribute dicts and refuses every other global.
    """
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise pickle.UnpicklingError("no TorchScript data.pkl in the archive")
        root = _TorchScriptDataUnpickler(zf.read(pkls[0]), zf, pkls[0][: -len("/data.pkl")]).load()
    tensors: dict[str, torch.Tensor] = {}
    attrs: dict[str, Any] = {}
    _flatten(root, "", tensors, attrs)
    return tensors, attrs


def load_rig(path: str | Path, device: torch.device | str = "cpu") -> MhrRig:
    """The MHR rig of a TorchScript ``mhr_model.pt``, read as tensors into our own MhrRig (its code never runs).

    Call: verts [B,V,3], skel_state [B,J,8] = rig(shape[B,45], params[B,204], expr[B,72]).
    """
    path = Path(path)
    fix = "download assets/mhr_model.pt of facebook/sam-3d-body-dinov3 again"
    if not path.is_file():
        raise MissingWeightsError(f"the MHR rig {path} does not exist; {fix}.")
    try:
        tensors, attrs = read_torchscript_tensors(path)
    except Exception as err:  # noqa: BLE001 - not a zip, foreign pickle, truncated storage
        raise WeightsMismatchError(f"{path} is not a readable MHR rig file ({_short(err)}); {fix}.") from err
    try:
        rig = rig_from_torchscript_tensors(tensors, attrs)
    except WeightsMismatchError as err:
        raise WeightsMismatchError(f"{path} does not hold the MHR rig ({_short(err)}); {fix}.") from err
    return rig.to(device)


def _short(err: BaseException) -> str:
    """An exception's first sentence on one line (for use inside one sentence)."""
    from ..fastload import one_line

    return one_line(err, 300)


def load_official_folder(model_dir: str | Path | None = None, search_dirs: Iterable[str | Path] | None = None,
                         device: torch.device | str = "cpu", config: Sam3dBodyConfig | None = None,
                         fast: bool = True) -> Sam3dBody:
    """Build SAM-3D-Body from an official folder; clear errors if missing (``load.load_sam3d_body`` picks the format).

    ``fast`` (default): checkpoint tensors go to ``device`` first and are cast to fp32 there on a
    few threads (same values); False: cast on the CPU, then moved (the previous path, for A/B benches).
    """
    folder = resolve_model_dir("sam3d_body", search_dirs, explicit=model_dir)
    cfg = config or config_from_yaml(folder / CONFIG)
    sd = read_checkpoint(folder / CKPT)
    cfg = _rig_sizes(cfg, sd)
    with torch.device("meta"):
        model = Sam3dBody(cfg)
    model = model.to_empty(device="cpu")  # untouched memory: the checkpoint's tensors replace it below
    model.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
    model.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
    sd = check_state_dict(model, sd, source=str(folder / CKPT))
    if fast:  # each tensor moved to the device first, then cast to fp32 there, on a few threads
        from ..fastload import place_all

        sd = place_all(sd, torch.device(device), torch.float32)
    model.load_state_dict(sd, strict=False, assign=True)
    model = model.float()  # checkpoints trained with USE_FP16 may store the backbone in bf16; autocast handles speed
    model.attach_rig(load_rig(folder / RIG, "cpu"))
    log.info("loaded SAM-3D-Body (%s, %.0fM parameters) from %s", cfg.backbone,
             sum(p.numel() for p in model.parameters()) / 1e6, folder)
    return model.eval().requires_grad_(False).to(device)
