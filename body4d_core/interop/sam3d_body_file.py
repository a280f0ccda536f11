"""ComfyUI core's repackaged SAM-3D-Body safetensors: detection, key mapping, loading (and writing, for tests).

Core (``SAM3DBody_Loader``, ``comfy_extras/nodes_sam3d_body.py``) loads one file from
``models/detection/`` (HF ``Comfy-Org/sam-3d-body``: ``sam_3d_body_dinov3_bf16.safetensors``).
Established from core's module tree and its loader (read, not run against the real file, which was
never available here):

* heads, decoders, prompt encoder, camera encoders keep the official ``model.ckpt`` names, including
  the ``.layers.0.0.`` FFN names (core's loader renames them to ``.layers.0.`` in memory) and
  ``hand_cls_embed.*`` (core pops it); ``*.hand_pose_comps_ori`` is absent;
* the DINOv3 backbone uses the transformers-style layout (``backbone.layer.N.attention.{q,k,v,o}_proj``
  with no k bias, ``mlp.{gate,up,down}_proj``, ``layer_scale{1,2}.lambda1``, ``backbone.embeddings.*``,
  ``backbone.norm``); no RoPE periods, no qkv bias mask, no mask token. An earlier core revision kept
  the official ``backbone.encoder.blocks.N.attn.qkv`` layout; both are accepted;
* the MHR rig is 17 plain ``mhr.*`` tensors (see ``mhr_rig``), evaluated natively here;
* ``face_landmarker.*`` (core's MediaPipe port) and ``head_pose.face_region_rgb`` (a render tint) are
  core extras this pack does not use;
* the backbone is bf16, heads and rig fp32; everything is loaded as float32 (autocast does the rest).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MissingWeightsError, WeightsMismatchError
from ..sam3d_body.config import Sam3dBodyConfig
from ..sam3d_body.loader import OPTIONAL_SUFFIXES, RESHAPEABLE, _default_buffer
from ..sam3d_body.mhr_rig import RIG_TENSORS, rig_from_state_dict
from ..sam3d_body.model import Sam3dBody

log = logging.getLogger(__name__)

LAYOUT_HF, LAYOUT_DINOV3 = "core-hf-backbone", "core-dinov3-backbone"
CONFIG_METADATA = "body4d.sam3d_body.config"  # our writer's architecture note; absent from core's real file
IGNORED_PREFIXES = ("face_landmarker.",)  # core extras: MediaPipe face landmarker port
IGNORED_SUFFIXES = (".face_region_rgb",)  # core extra: per-vertex face tint for its renderer

# transformers-style backbone key (after "backbone.") -> ours (after "backbone.encoder."); None = fused qkv
_BB_RULES: tuple[tuple[re.Pattern[str], str | None], ...] = tuple((re.compile(p), r) for p, r in (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "storage_tokens"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.patch_embeddings\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^layer\.(\d+)\.norm([12])\.(weight|bias)$", r"blocks.\1.norm\2.\3"),
    (r"^layer\.(\d+)\.attention\.o_proj\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$", None),
    (r"^layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^layer\.(\d+)\.mlp\.gate_proj\.(weight|bias)$", r"blocks.\1.mlp.w1.\2"),
    (r"^layer\.(\d+)\.mlp\.up_proj\.(weight|bias)$", r"blocks.\1.mlp.UP.\2"),
    (r"^layer\.(\d+)\.mlp\.down_proj\.(weight|bias)$", r"blocks.\1.mlp.DOWN.\2"),
    (r"^norm\.(weight|bias)$", r"norm.\1"),
    (r"^rope_embeddings\.inv_freq$", "rope_embed.periods"),
))
_QKV = re.compile(r"^layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def detect_layout(keys) -> str | None:
    """LAYOUT_HF / LAYOUT_DINOV3 for a core-format SAM-3D-Body key set, None for anything else."""
    keys = set(keys)
    if not any(k.startswith("head_pose.") for k in keys):
        return None
    if "backbone.embeddings.cls_token" in keys or "backbone.layer.0.attention.q_proj.weight" in keys:
        return LAYOUT_HF
    if "mhr.base_shape" in keys and "backbone.encoder.blocks.0.attn.qkv.weight" in keys:
        return LAYOUT_DINOV3  # the official backbone names, but with core's rig tensors beside them
    return None


def is_core_file(path: str | Path) -> bool:
    """True when path is a safetensors file laid out like ComfyUI core's SAM-3D-Body repack."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return detect_layout(f.keys()) is not None
    except Exception:  # noqa: BLE001 - unreadable or not safetensors: simply not a core file
        return False


@dataclass
class MappedWeights:
    """A core file split into our network state dict, the rig tensors and what was deliberately dropped."""

    network: dict[str, torch.Tensor] = field(default_factory=dict)
    rig: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)  # our key -> the file key(s) it came from


def _backbone_key(rest: str, mlp_names: tuple[str, str]) -> str | None:
    """Our backbone key for one transformers-style key (without prefixes); '' marks a qkv part; None unknown."""
    for pat, repl in _BB_RULES:
        if pat.match(rest):
            if repl is None:
                return ""
            return pat.sub(repl, rest).replace("UP", mlp_names[0]).replace("DOWN", mlp_names[1])
    return None


def _own_name(key: str, own_keys: set[str]) -> str | None:
    """Our name for a non-backbone key: itself, or with one in-memory ``.layers.0.`` FFN name made ``.layers.0.0.``."""
    if key in own_keys:
        return key
    start = key.find(".layers.0.")
    while start >= 0:
        cand = key[:start] + ".layers.0.0." + key[start + len(".layers.0."):]
        if cand in own_keys:
            return cand
        start = key.find(".layers.0.", start + 1)
    return None


def _fuse_qkv(parts: dict[tuple[int, str], dict[str, torch.Tensor]], out: MappedWeights) -> list[str]:
    """Concatenate per-layer q/k/v projections into ``attn.qkv`` (a missing k bias is zero); returns problems."""
    problems = []
    for (layer, kind), got in sorted(parts.items()):
        need = ("q", "k", "v") if kind == "weight" else ("q", "v")
        lacking = [f"backbone.layer.{layer}.attention.{n}_proj.{kind}" for n in need if n not in got]
        if lacking:
            problems += lacking
            continue
        k = got.get("k", torch.zeros_like(got["q"]))
        key = f"backbone.encoder.blocks.{layer}.attn.qkv.{kind}"
        out.network[key] = torch.cat([got["q"], k, got["v"]], 0)
        out.source[key] = f"backbone.layer.{layer}.attention.{{q,k,v}}_proj.{kind}"
    return problems


def map_core_state_dict(sd: dict[str, torch.Tensor], own_keys: set[str]) -> MappedWeights:
    """Map every key of a core-format state dict to our Sam3dBody keys (strict: unknown keys raise)."""
    layout = detect_layout(sd)
    if layout is None:
        raise WeightsMismatchError("not a ComfyUI core SAM-3D-Body state dict (no head_pose.* with a core backbone)")
    swiglu = any(".mlp.w1." in k for k in own_keys)
    mlp_names = ("w2", "w3") if swiglu else ("fc1", "fc2")
    out, unknown, qkv = MappedWeights(), [], {}
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            out.ignored.append(key)
        elif key.startswith("mhr.") and key[len("mhr."):] in RIG_TENSORS:
            out.rig[key] = value
        elif key.startswith("backbone.") and layout == LAYOUT_HF:
            ours = _backbone_key(key[len("backbone."):], mlp_names)
            if ours == "":
                m = _QKV.match(key[len("backbone."):])
                qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
            elif ours is None or f"backbone.encoder.{ours}" not in own_keys:
                unknown.append(key)
            else:
                if key.endswith("inv_freq"):  # transformers stores 1 / period
                    value = 1.0 / value.float()
                out.network[f"backbone.encoder.{ours}"], out.source[f"backbone.encoder.{ours}"] = value, key
        else:
            ours = _own_name(key, own_keys)
            if ours is None:
                unknown.append(key)
            else:
                out.network[ours], out.source[ours] = value, key
    problems = _fuse_qkv(qkv, out)
    if unknown or problems:
        raise WeightsMismatchError(_describe(unknown, "keys with no counterpart in SAM-3D-Body")
                                   + (" " + _describe(problems, "incomplete q/k/v projections") if problems else ""))
    return out


def _describe(keys: list[str], what: str) -> str:
    keys = sorted(keys)
    if not keys:
        return ""
    return f"{len(keys)} {what}: {', '.join(keys[:8])}" + (f" (+{len(keys) - 8} more)." if len(keys) > 8 else ".")


def _derive(model: Sam3dBody, net: dict[str, torch.Tensor]) -> None:
    """Fill buffers the core file does not carry (the official loader's defaults: RoPE periods, qkv bias
    mask, mask token), except *_comps_ori: a copy of the PCA components the official code kept under that name."""
    for key, like in model.state_dict().items():
        if key in net or not key.endswith(OPTIONAL_SUFFIXES) or key.startswith("mhr."):
            continue
        comps = net.get(key.replace("hand_pose_comps_ori", "hand_pose_comps")) \
            if key.endswith("hand_pose_comps_ori") else None
        net[key] = comps.clone() if comps is not None else _default_buffer(model, key, like)


def check_mapped(model: Sam3dBody, mapped: MappedWeights, source: str) -> dict[str, torch.Tensor]:
    """Derive what may be derived, then raise naming file keys on any missing key or shape mismatch."""
    net = dict(mapped.network)
    _derive(model, net)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    missing = sorted(set(own) - set(net))
    for key in (k for k in own if k in net and net[k].shape != own[k].shape):
        if net[key].numel() == own[key].numel() and key in RESHAPEABLE:
            net[key] = net[key].reshape(own[key].shape)
    shapes = [f"{mapped.source.get(k, k)}: file {tuple(net[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in net and net[k].shape != own[k].shape]
    if missing or shapes:
        parts = [f"{source} is not a complete ComfyUI-core SAM-3D-Body file for this architecture"]
        if missing:
            parts.append(_describe(missing, "tensors missing (our names)"))
        if shapes:
            parts.append(_describe(shapes, "shape mismatches"))
        parts.append("Use Comfy-Org/sam-3d-body's detection/sam_3d_body_dinov3_bf16.safetensors unchanged.")
        raise WeightsMismatchError(" ".join(parts))
    return net


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - truncated or foreign files
        raise WeightsMismatchError(f"cannot read {path}: {err}. Delete it and download it again.") from err


def _config_from_metadata(path: Path) -> Sam3dBodyConfig:
    """The architecture our writer noted in the file's metadata; the released model's when absent."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        note = (f.metadata() or {}).get(CONFIG_METADATA)
    if not note:
        return Sam3dBodyConfig()
    try:
        raw = json.loads(note)
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return Sam3dBodyConfig(**raw)
    except (ValueError, TypeError) as err:
        raise WeightsMismatchError(f"{path.name}: unreadable {CONFIG_METADATA} metadata ({err})") from err


def _rig_sizes(cfg: Sam3dBodyConfig, sd: dict[str, torch.Tensor]) -> Sam3dBodyConfig:
    """MHR mesh sizes from the head buffers, so the model is built to the file's LOD."""
    try:
        j = int(sd["head_pose.joint_rotation"].shape[0])
        return cfg.replace(num_joints=j, num_faces=int(sd["head_pose.faces"].shape[0]),
                           num_verts=int(sd["head_pose.keypoint_mapping"].shape[1]) - j)
    except KeyError as err:
        raise WeightsMismatchError(f"core file lacks the MHR head buffer {err}") from err


def _rig_beside(path: Path, rig_path: str | Path | None) -> Path:
    """The TorchScript rig for a core file without ``mhr.*`` tensors: explicit, beside it, or an error."""
    from ..sam3d_body.loader import RIG

    cands = [Path(rig_path)] if rig_path else [path.parent / "mhr_model.pt", path.parent / RIG]
    for cand in cands:
        if cand.is_file():
            return cand
    raise MissingWeightsError(
        f"{path.name} carries no MHR rig tensors (mhr.*) and no TorchScript rig was found "
        f"({', '.join(str(c) for c in cands)}). Put assets/mhr_model.pt of facebook/sam-3d-body-dinov3 beside "
        f"it as mhr_model.pt, or use Comfy-Org/sam-3d-body's file, which includes the rig.")


def load_core_safetensors(path: str | Path, device: torch.device | str = "cpu", config: Sam3dBodyConfig | None = None,
                          rig_path: str | Path | None = None) -> Sam3dBody:
    """Build SAM-3D-Body (float32, eval) from ComfyUI core's safetensors; the rig from its mhr.* tensors."""
    from ..sam3d_body.loader import load_rig

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist. Put Comfy-Org/sam-3d-body's "
                                  f"sam_3d_body_dinov3_bf16.safetensors in models/detection.")
    sd = _read(path)
    if detect_layout(sd) is None:
        raise WeightsMismatchError(f"{path.name} is not ComfyUI core's SAM-3D-Body file (no head_pose.* tensors "
                                   f"beside a core backbone); use Comfy-Org/sam-3d-body's "
                                   f"sam_3d_body_dinov3_bf16.safetensors.")
    cfg = _rig_sizes(config or _config_from_metadata(path), sd)
    with torch.device("meta"):
        model = Sam3dBody(cfg)
    mapped = map_core_state_dict(sd, set(model.state_dict()))
    net = check_mapped(model, mapped, str(path))  # on the meta model: shapes only, nothing allocated yet
    model = model.to_empty(device="cpu")
    model.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
    model.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
    model.load_state_dict(net, strict=False, assign=True)
    for held in (sd, net, mapped.network):  # the bf16 originals go as soon as their float32 copies exist
        held.clear()
    model = model.float()
    if mapped.rig:
        missing = [f"mhr.{k}" for k in RIG_TENSORS if f"mhr.{k}" not in mapped.rig]
        if missing:
            raise WeightsMismatchError(f"{path.name}: the MHR rig is incomplete, missing {', '.join(missing)}")
        model.attach_rig(rig_from_state_dict(mapped.rig))
    else:
        model.attach_rig(load_rig(_rig_beside(path, rig_path), "cpu"))
    log.info("loaded SAM-3D-Body from ComfyUI core file %s (%d core extras ignored)", path.name, len(mapped.ignored))
    return model.eval().requires_grad_(False).to(device)


# ------------------------------------------------------------------ writing (tests, conversions)

def _hf_backbone(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Our backbone tensors -> the transformers-style layout (the inverse of the mapping above)."""
    out: dict[str, torch.Tensor] = {}
    inverse = {"cls_token": "embeddings.cls_token", "storage_tokens": "embeddings.register_tokens",
               "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
               "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
               "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    block = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
             "ls2.gamma": "layer_scale2.lambda1", "mlp.w1": "mlp.gate_proj", "mlp.w2": "mlp.up_proj",
             "mlp.w3": "mlp.down_proj", "mlp.fc1": "mlp.up_proj", "mlp.fc2": "mlp.down_proj"}
    for k, v in inverse.items():
        out[f"backbone.{v}"] = sd[f"backbone.encoder.{k}"]
    for i in range(depth):
        pre = f"backbone.encoder.blocks.{i}."
        for key, value in sd.items():
            if not key.startswith(pre) or ".qkv." in key:
                continue
            rest = key[len(pre):]
            name, _, kind = rest.rpartition(".")
            if name in block:
                out[f"backbone.layer.{i}.{block[name]}.{kind}"] = value
            elif rest in block:
                out[f"backbone.layer.{i}.{block[rest]}"] = value
        q, k, v = sd[pre + "attn.qkv.weight"].chunk(3, 0)
        bias = sd[pre + "attn.qkv.bias"]
        mask = sd.get(pre + "attn.qkv.bias_mask")
        qb, kb, vb = (bias * mask.to(bias.dtype) if mask is not None else bias).chunk(3, 0)  # the bias in effect
        if kb.device.type != "meta" and kb.abs().max() > 0:
            raise ValueError(f"{pre}attn.qkv.bias has a key bias in effect, which core's layout cannot hold")
        out.update({f"backbone.layer.{i}.attention.q_proj.weight": q, f"backbone.layer.{i}.attention.k_proj.weight": k,
                    f"backbone.layer.{i}.attention.v_proj.weight": v, f"backbone.layer.{i}.attention.q_proj.bias": qb,
                    f"backbone.layer.{i}.attention.v_proj.bias": vb})
    return out


def core_state_dict(model: Sam3dBody, rig_tensors: dict[str, torch.Tensor] | None,
                    backbone_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Our model's weights in ComfyUI core's file layout (backbone in backbone_dtype, heads fp32)."""
    sd = {k: v.detach() if v.device.type == "meta" else v.detach().cpu()
          for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    bb = _hf_backbone(sd, model.cfg.vit_depth)
    out = {k: v.to(backbone_dtype) for k, v in bb.items()}
    for key, value in sd.items():
        if key.startswith("backbone.") or key.endswith("hand_pose_comps_ori"):
            continue
        out[key] = value
    out["head_pose.face_region_rgb"] = torch.zeros(model.cfg.num_verts, 3, device=sd["head_pose.faces"].device)
    for key, value in (rig_tensors or {}).items():
        out[f"mhr.{key}"] = value
    return {k: v.contiguous().clone() for k, v in out.items()}


def save_core_layout(model: Sam3dBody, path: str | Path, rig_tensors: dict[str, torch.Tensor] | None,
                     backbone_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write model (+ rig tensors) as a core-layout safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    note = json.dumps(dataclasses.asdict(model.cfg))
    save_file(core_state_dict(model, rig_tensors, backbone_dtype), str(path),
              metadata={"format": "pt", CONFIG_METADATA: note})
    return path
