"""Random-weight checkpoints in every model's official on-disk layout (tiny for tests, real size for benches).

``python -m body4d_core tiny-checkpoints --root DIR`` writes the tiny ones; then the whole
pipeline (headless or in ComfyUI, with DIR as the models root) runs anywhere without real
weights. The outputs are meaningless (random weights) but every real loading and inference
code path runs, which is what the end-to-end tests need. ``preset="real"`` writes the same
layouts at the released sizes (for GPU benchmarks of the whole pipeline, bench/bench_pipeline.py):
built on ``device`` (a GPU makes random init fast) with the large networks' parameters stored
in ``weight_dtype`` (bf16 by default), which every loader accepts and casts to its own dtype.
Each writer belongs to its model's package; this module only places them where
``body4d_core.weights`` looks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..weights import MODEL_SPECS, ModelSpec, verify

log = logging.getLogger(__name__)

PRESETS = ("tiny", "real")
RIG_HIDDEN_REAL = 3000  # synthetic MHR rig's corrective width at the real size (as bench/bench_body.py)


@dataclass(frozen=True)
class WriteSpec:
    """How to write one checkpoint: size preset, where to build it, dtype of the large parameters."""

    preset: str = "tiny"
    device: str = "cpu"
    weight_dtype: torch.dtype | None = None  # None: as built (fp32)


def _cast_params(module: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Cast floating parameters (not buffers) of module in place to dtype (no-op for None)."""
    if dtype is None:
        return
    for p in module.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)


def _sam3(folder: Path, seed: int, ws: WriteSpec) -> None:
    from .sam3 import save_real_size_checkpoint, save_tiny_checkpoint

    if ws.preset == "real":
        save_real_size_checkpoint(folder, seed=seed, device=ws.device, weight_dtype=ws.weight_dtype or torch.float32)
    else:
        save_tiny_checkpoint(folder, seed=seed)


def uv_sphere(rows: int = 103, cols: int = 179) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sphere: 2 poles + rows x cols ring vertices, closed outward-wound faces (int64).

    The defaults give exactly MHR LOD1's counts (18439 vertices, 36874 faces), so a real-size
    stand-in renders like a closed body mesh instead of random triangles spanning the body.
    """
    theta = torch.arange(1, rows + 1, dtype=torch.float64) * torch.pi / (rows + 1)
    phi = torch.arange(cols, dtype=torch.float64) * 2 * torch.pi / cols
    ring = torch.stack([torch.sin(theta)[:, None] * torch.cos(phi), torch.cos(theta)[:, None].expand(rows, cols),
                        torch.sin(theta)[:, None] * torch.sin(phi)], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                       torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)]).float()
    c = torch.arange(cols)
    c1 = (c + 1) % cols
    last = 1 + rows * cols
    faces = [torch.stack([torch.zeros_like(c), 1 + c1, 1 + c], -1)]
    for r in range(rows - 1):
        a, b = 1 + r * cols + c, 1 + r * cols + c1
        a2, b2 = a + cols, b + cols
        faces += [torch.stack([a, b, a2], -1), torch.stack([b, b2, a2], -1)]
    faces.append(torch.stack([torch.full_like(c, last), 1 + (rows - 1) * cols + c, 1 + (rows - 1) * cols + c1], -1))
    faces_t = torch.cat(faces)
    tri = verts[faces_t]
    if torch.einsum("ij,ij->", tri[:, 0].double(), torch.cross(tri[:, 1], tri[:, 2], dim=-1).double()) < 0:
        faces_t = faces_t[:, [0, 2, 1]]  # outward normals (positive enclosed volume)
    return verts, faces_t


def _body_like_rig(cfg, seed: int):
    """A synthetic MHR-size rig (same call, same work) posing a body-sized closed mesh rigidly.

    Random rig tensors would scatter neighbouring vertices over random joints; here the rest
    shape is a 1.7 m ellipsoid on uv_sphere's topology, every vertex follows joint 0 and the
    shape / expression / corrective offsets are small, so meshes stay coherent (what the render
    stage's cost depends on).
    """
    from ..sam3d_body.mhr_rig import MhrRig
    from .body import random_rig_tensors

    t = random_rig_tensors(cfg.num_verts, cfg.num_joints, hidden=RIG_HIDDEN_REAL, seed=seed)
    unit, _ = uv_sphere()
    if unit.shape[0] != cfg.num_verts:
        raise ValueError(f"uv_sphere has {unit.shape[0]} vertices, the config {cfg.num_verts}")
    t["base_shape"] = unit * torch.tensor([22.0, 85.0, 14.0])  # centimetres, like MHR's output
    t["identity_basis"] = t["identity_basis"] * 0.05
    t["expr_basis"] = t["expr_basis"] * 0.1
    t["pose_corr_weight"] = t["pose_corr_weight"] * 0.05
    t["lbs_vert_indices"] = torch.arange(cfg.num_verts)
    t["lbs_skin_indices"] = torch.zeros(cfg.num_verts, dtype=torch.int32)
    t["lbs_skin_weights"] = torch.ones(cfg.num_verts)
    return MhrRig(t).eval().requires_grad_(False)


def _real_body_model(seed: int, device: str):
    """The released SAM-3D-Body sizes with random weights and a synthetic MHR-size rig, built on device."""
    from ..sam3d_body.config import Sam3dBodyConfig
    from ..sam3d_body.model import Sam3dBody
    from .body import randomize

    cfg = Sam3dBodyConfig()
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = Sam3dBody(cfg)
    except (RuntimeError, TypeError) as err:  # built on the CPU instead (slower init, same result shape)
        log.warning("building SAM-3D-Body on %s failed (%s); building it on the CPU", device, err)
        model = Sam3dBody(cfg)
    model = randomize(model.to(device), seed)  # normal_ on the device: seconds on a GPU
    _, faces = uv_sphere()
    with torch.no_grad():
        for head in (model.head_pose, model.head_pose_hand):
            head.faces.copy_(faces)
    model.attach_rig(_body_like_rig(cfg, seed))
    return model.eval().requires_grad_(False)


def _sam3d_body(folder: Path, seed: int, ws: WriteSpec) -> None:
    from ..sam3d_body.config import tiny_config
    from .body import OFFICIAL_YAML, random_model, save_official_layout

    if ws.preset != "real":
        save_official_layout(random_model(tiny_config(), seed), folder)
        return
    model = _real_body_model(seed, ws.device)
    _cast_params(model.backbone, ws.weight_dtype)  # the loader casts back to fp32 (the checkpoint may hold bf16)
    save_official_layout(model.cpu(), folder, OFFICIAL_YAML)


def _vas(folder: Path, seed: int, ws: WriteSpec) -> None:
    from .amodal import build_vas_parts, save_vas_folder

    parts = build_vas_parts(ws.preset, seed, ws.device)
    for k in ("unet", "vae", "image_encoder"):
        _cast_params(parts[k], ws.weight_dtype)
        parts[k].cpu()
    save_vas_folder(parts, folder)


def _depth(folder: Path, seed: int, ws: WriteSpec) -> None:
    from .amodal import build_depth_model, save_depth_folder

    model, prep = build_depth_model(ws.preset, seed, ws.device)
    _cast_params(model, ws.weight_dtype)
    save_depth_folder(model.cpu(), prep, folder)


def _moge(folder: Path, seed: int, ws: WriteSpec) -> None:
    from ..fov import MOGE2_VITL_CONFIG, build_moge
    from .moge import TINY_MOGE_CONFIG

    config = MOGE2_VITL_CONFIG if ws.preset == "real" else TINY_MOGE_CONFIG
    model = build_moge(config, seed)
    _cast_params(model, ws.weight_dtype)  # the loader copies into fp32 parameters
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": dict(config), "model": model.state_dict()}, folder / "model.pt")


WRITERS: dict[str, Callable[[Path, int, WriteSpec], None]] = {
    "sam3": _sam3, "sam3d_body": _sam3d_body, "diffusion_vas_amodal": _vas,
    "diffusion_vas_completion": lambda f, s, ws: _vas(f, s + 1, ws), "depth_anything": _depth, "moge": _moge,
}


def target_dir(root: Path, spec: ModelSpec) -> Path:
    return Path(root) / spec.folder / spec.subdir


def write_checkpoints(root: str | Path, names: Iterable[str] | None = None, seed: int = 0, preset: str = "tiny",
                      device: str | torch.device = "cpu", weight_dtype: torch.dtype | None = None,
                      on_written: Callable[[str, float], None] | None = None) -> dict[str, Path]:
    """Write random checkpoints of ``names`` (default: all) at ``preset`` size under root; name -> folder.

    ``on_written(name, seconds)`` is called after each model (benchmarks report the times).
    """
    import time

    if preset not in PRESETS:
        raise ValueError(f"unknown checkpoint preset {preset!r}; use one of {', '.join(PRESETS)}")
    ws = WriteSpec(preset, str(device), weight_dtype)
    out = {}
    for name in names or MODEL_SPECS:
        t0 = time.perf_counter()
        spec = MODEL_SPECS[name]
        folder = target_dir(Path(root), spec)
        folder.mkdir(parents=True, exist_ok=True)
        WRITERS[name](folder, seed, ws)
        verify(name, folder)
        log.info("%s %s written to %s", preset, name, folder)
        out[name] = folder
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if on_written is not None:
            on_written(name, time.perf_counter() - t0)
    return out


def write_tiny_checkpoints(root: str | Path, names: Iterable[str] | None = None, seed: int = 0,
                           preset: str = "tiny", **kwargs) -> dict[str, Path]:
    """Write the checkpoints of ``names`` (default: all) under root; returns name -> folder.

    ``preset="real"`` writes the released sizes instead (see write_checkpoints for the options).
    """
    return write_checkpoints(root, names, seed, preset, **kwargs)
