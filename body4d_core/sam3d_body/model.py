"""The SAM-3D-Body network: DINOv3 backbone, body/hand promptable decoders, MHR and camera heads.

State-dict keys match the official ``model.ckpt`` (``backbone.encoder.*``, ``decoder.*``,
``head_pose.*`` ...). The MHR rig (read from ``assets/mhr_model.pt`` into ``MhrRig``) is attached as ``mhr``
and is not part of the checked state dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import Sam3dBodyConfig
from .heads import NPOSE, CameraHead, MHRHead, camera_geometry, project
from .layers import FFN, MLP, CameraEncoder, PositionEmbeddingRandom, PromptableDecoder, PromptEncoder
from .runner import BodyRunner
from .vit import DinoV3ViT

log = logging.getLogger(__name__)

PELVIS = (9, 10)  # MHR70 left/right hip


@dataclass
class CropBatch:
    """Crops ready for the network (all tensors on the model device, float32)."""

    img: torch.Tensor  # [B, 3, S, S] in [0, 1]
    mask: torch.Tensor  # [B, 1, S, S] in [0, 1]
    mask_score: torch.Tensor  # [B] (0 = no mask)
    center: torch.Tensor  # [B, 2] crop box centre, full-image pixels
    size: torch.Tensor  # [B] crop box side, full-image pixels
    affine: torch.Tensor  # [B, 2, 3] full image -> crop
    K: torch.Tensor  # [B, 3, 3]
    img_wh: torch.Tensor  # [B, 2] full-image width, height

    @property
    def n(self) -> int:
        return int(self.img.shape[0])


class Backbone(nn.Module):
    """Holds the ViT under the official ``backbone.encoder`` prefix."""

    def __init__(self, cfg: Sam3dBodyConfig) -> None:
        super().__init__()
        self.encoder = DinoV3ViT(cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.vit_ffn, cfg.vit_swiglu,
                                 cfg.patch_size, cfg.vit_registers, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def _branch_modules(m: "Sam3dBody", suffix: str) -> dict[str, nn.Module]:
    names = ("init_pose", "init_camera", "init_to_token_mhr", "prev_to_token_mhr", "ray_cond_emb",
             "head_pose", "head_camera", "keypoint_embedding", "keypoint3d_embedding", "decoder",
             "keypoint_posemb_linear", "keypoint_feat_linear", "keypoint3d_posemb_linear")
    return {n: getattr(m, n + suffix) for n in names}


class Sam3dBody(nn.Module):
    """SAM-3D-Body. ``decode`` runs one branch ('body' or 'hand') on encoded crops."""

    def __init__(self, cfg: Sam3dBodyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.runner = BodyRunner()  # how estimate_bodies runs this model by default (optimize / compile_for)
        d, c, k = cfg.dec_dim, cfg.vit_dim, cfg.num_keypoints
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        self.backbone = Backbone(cfg)
        heads = dict(dim=d, mlp_depth=cfg.mhr_mlp_depth, mlp_div=cfg.mhr_mlp_div, num_verts=cfg.num_verts,
                     num_faces=cfg.num_faces, num_joints=cfg.num_joints)
        self.head_pose = MHRHead(**heads)
        self.head_pose_hand = MHRHead(**heads, hand_model=True)
        self.init_pose = nn.Embedding(1, NPOSE)
        self.init_pose_hand = nn.Embedding(1, NPOSE)
        self.head_camera = CameraHead(d, cfg.cam_mlp_depth, cfg.cam_mlp_div)
        self.head_camera_hand = CameraHead(d, cfg.cam_mlp_depth, cfg.cam_mlp_div, cfg.hand_cam_scale)
        self.init_camera = nn.Embedding(1, 3)
        self.init_camera_hand = nn.Embedding(1, 3)
        for suffix in ("", "_hand"):
            setattr(self, "init_to_token_mhr" + suffix, nn.Linear(NPOSE + 6, d))
            setattr(self, "prev_to_token_mhr" + suffix, nn.Linear(NPOSE + 3, d))
        self.prompt_encoder = PromptEncoder(c, k, cfg.mask_embed_type)
        self.prompt_to_token = nn.Linear(c, d)
        dec = dict(dim=d, ctx_dim=c, depth=cfg.dec_depth, heads=cfg.dec_heads, head_dim=cfg.dec_head_dim,
                   mlp=cfg.dec_mlp)
        self.decoder = PromptableDecoder(**dec)
        self.decoder_hand = PromptableDecoder(**dec)
        self.hand_pe_layer = PositionEmbeddingRandom(c // 2)
        self.ray_cond_emb = CameraEncoder(c, cfg.patch_size)
        self.ray_cond_emb_hand = CameraEncoder(c, cfg.patch_size)
        self.hand_box_embedding = nn.Embedding(2, d)
        self.hand_cls_embed = nn.Linear(d, 2)
        self.bbox_embed = MLP(d, d, 4, 3)
        for suffix in ("", "_hand"):
            setattr(self, "keypoint_embedding" + suffix, nn.Embedding(k, d))
            setattr(self, "keypoint3d_embedding" + suffix, nn.Embedding(k, d))
            setattr(self, "keypoint_posemb_linear" + suffix, FFN(2, d, d, 2))
            setattr(self, "keypoint3d_posemb_linear" + suffix, FFN(3, d, d, 2))
            setattr(self, "keypoint_feat_linear" + suffix, nn.Linear(c, d))
        self.mhr: nn.Module | None = None

    @property
    def faces(self) -> torch.Tensor:
        """MHR mesh triangles [F, 3] (from the checkpoint)."""
        return self.head_pose.faces

    # ------------------------------------------------------------------ speed options
    # Thin entry points: the policy and the compiled graphs are a ``runner.BodyRunner`` (``self.runner``),
    # applied to the plain modules only while a job runs.

    def optimize(self, compile_backbone: str = "", compile_decoder: str = "", bucket: int = 0,
                 backend: str = "inductor", sdpa: str = "", decoder_dynamic: bool = True) -> dict[str, str]:
        """torch.compile the ViT blocks and/or decoder layers (mode names, '' = eager); logs, never fails.

        bucket: the backbone then runs padded chunks of at most this size (no recompiles for a partial
        batch; an OOM-halved batch uses its own size). sdpa: attention kernel baked into the compiled
        backbone ('' = torch's choice; see runner.SDPA_BACKENDS). decoder_dynamic: the compiled decoder
        layers take any batch size in one graph (default); False = one static graph per batch size.
        Returns what is in effect: {'backbone': mode or '', 'decoder': mode or ''}.
        """
        runner = BodyRunner(compile_backbone, compile_decoder, int(bucket) if compile_backbone else 0, backend,
                            sdpa, decoder_dynamic, cache_dir=self.runner.cache_dir)
        self.runner = runner.prepared(self.init_pose.weight.device)
        return self.runner.in_effect()

    def compile_for(self, mode: str, batch_size: int, crops: int | None = None,
                    body_mode: str = "body") -> dict[str, str] | None:
        """Compile backbone blocks and (fp32) decoder layers for batches of ``batch_size`` on CUDA.

        ``mode`` '' (or a model off CUDA) = eager; 'auto' = compile only where it pays: the job
        (``crops`` person crops in ``body_mode``) is large enough to win back the compile time
        (``runner.AUTO_COMPILE_MIN_CROPS``), or this model is already compiled for this batch size; else
        eager. A no-op when the same (mode, batch size) is already in effect, so callers may ask on
        every run; returns what changed, else None.
        """
        dev = self.init_pose.weight.device
        runner = self.runner.for_job(mode, batch_size, dev, crops, body_mode)
        if runner is self.runner:
            return None
        self.runner = runner.prepared(dev)
        return runner.in_effect()

    def _auto_compile_mode(self, batch_size: int, crops: int | None, body_mode: str) -> str:
        """'default' where compiling pays for this job (see ``compile_for``), else ''."""
        return self.runner.auto_mode(batch_size, crops, body_mode)

    @property
    def _compiled_for(self) -> tuple[str, int]:
        """(compile mode, batch size) in effect (``BodyRunner.compiled_for``)."""
        return self.runner.compiled_for

    @_compiled_for.setter
    def _compiled_for(self, value: tuple[str, int]) -> None:
        mode, bucket = value
        self.runner = BodyRunner(mode, mode, bucket=bucket, cache_dir=self.runner.cache_dir) if mode else \
            BodyRunner(cache_dir=self.runner.cache_dir)

    # ------------------------------------------------------------------ encoding

    def attach_rig(self, rig: nn.Module) -> None:
        """Attach the MHR rig (a module called as rig(shape[B,45], params[B,204], expr[B,72]))."""
        self.mhr = rig

    def encode(self, batch: CropBatch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Backbone features (+ mask prompt) as float32 [B, C, g, g]; backbone runs under autocast(dtype)."""
        x = (batch.img - self.image_mean) / self.image_std
        dev = x.device.type
        with torch.autocast(dev, dtype=dtype, enabled=dev == "cuda" and dtype != torch.float32):
            feats = self.backbone(x).float()
        if self.prompt_encoder.has_mask:
            feats = feats + self.prompt_encoder.embed_mask(batch.mask, batch.mask_score, feats.shape[-2:]).float()
        return feats

    def condition(self, batch: CropBatch) -> torch.Tensor:
        """CLIFF condition ((cx - px)/f, (cy - py)/f, size/f)."""
        f = batch.K[:, 0, 0]
        centre = batch.K[:, :2, 2] if self.cfg.use_intrin_center else batch.img_wh / 2
        xy = (batch.center - centre) / f[:, None]
        return torch.cat([xy, (batch.size / f)[:, None]], 1)

    def rays(self, batch: CropBatch) -> torch.Tensor:
        """Per crop pixel normalised camera ray (x, y) [B, 2, S, S] (upstream's input to the ray encoder;
        the decoder uses the equivalent ``patch_rays``, tested against this)."""
        s = self.cfg.image_size
        ar = torch.arange(s, device=batch.img.device, dtype=torch.float32)
        x, y = self._rays_at(batch, ar[None, None, :], ar[None, :, None])
        return torch.stack([x.expand(-1, s, s), y.expand(-1, s, s)], 1)

    def patch_rays(self, batch: CropBatch, enc: CameraEncoder) -> torch.Tensor:
        """``enc.downsample(self.rays(batch))`` [B, 2, h, w] without building the crop-resolution rays.

        Each ray coordinate is affine in one pixel index, and the antialiased downsampling is linear with
        weights summing to one, so it is the same affine map of the downsampled pixel indices (computed
        once for the crop size) -- up to float rounding, and 2 x 512^2 values per crop fewer to write.
        """
        s = self.cfg.image_size
        ar = torch.arange(s, device=batch.img.device, dtype=torch.float32)
        idx = enc.downsample(torch.stack([ar[None, :].expand(s, s), ar[:, None].expand(s, s)])[None])[0]
        return torch.stack(self._rays_at(batch, idx[0][None], idx[1][None]), 1)

    @staticmethod
    def _rays_at(batch: CropBatch, cols: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray x at crop columns ``cols`` and ray y at crop rows ``rows`` (broadcast against [B, 1, 1]):
        crop pixel -> frame pixel (the crop's affine) -> normalised camera coordinate (K)."""
        a, k = batch.affine, batch.K
        x = (cols - a[:, 0, 2, None, None]) / a[:, 0, 0, None, None]
        y = (rows - a[:, 1, 2, None, None]) / a[:, 1, 1, None, None]
        x = (x - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None]
        y = (y - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None]
        return x, y

    # ------------------------------------------------------------------ decoding

    def _pose_from_token(self, br: dict[str, nn.Module], token: torch.Tensor, batch: CropBatch,
                         with_verts: bool) -> dict[str, torch.Tensor]:
        """Heads + rig + camera in fp32 (autocast off): their outputs are the results."""
        with torch.autocast(token.device.type, enabled=False):
            return self._pose_from_token32(br, token.float(), batch, with_verts)

    def _pose_from_token32(self, br: dict[str, nn.Module], token: torch.Tensor, batch: CropBatch,
                           with_verts: bool) -> dict[str, torch.Tensor]:
        n = token.shape[0]
        init_pose = br["init_pose"].weight.float().expand(n, -1)
        init_cam = br["init_camera"].weight.float().expand(n, -1)
        p = br["head_pose"].decode(token, init_pose)
        p["cam"] = br["head_camera"](token, init_cam)
        if self.mhr is None:
            raise RuntimeError("the MHR rig is not attached (attach_rig)")
        p.update(camera_geometry(br["head_pose"], self.mhr, p, self.cfg.num_keypoints, with_verts))
        p["cam_t"] = br["head_camera"].cam_t(p["cam"], batch.center, batch.size, batch.K, batch.img_wh,
                                              self.cfg.use_intrin_center)
        p["kp2d"], p["kp_depth"] = project(p["kp3d"], p["cam_t"], batch.K)
        p["kp2d_crop"] = self.full_to_crop(p["kp2d"], batch)
        p["focal"] = batch.K[:, 0, 0]
        return p

    def full_to_crop(self, pts: torch.Tensor, batch: CropBatch) -> torch.Tensor:
        """Full-image pixels -> crop coordinates normalised to [-0.5, 0.5]."""
        a = batch.affine.to(pts.dtype)
        return (pts @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]) / self.cfg.image_size - 0.5

    def _update_tokens(self, br: dict[str, nn.Module], p: dict[str, torch.Tensor], ctx: torch.Tensor,
                       grid: tuple[int, int], tokens: torch.Tensor, pe: torch.Tensor, k2: int,
                       k3: int) -> tuple[torch.Tensor, torch.Tensor]:
        nk = self.cfg.num_keypoints
        kp = p["kp2d_crop"]
        kp01 = kp + 0.5
        invalid = (kp01 < 0).any(-1) | (kp01 > 1).any(-1) | (p["kp_depth"] < 1e-5)
        valid = (~invalid)[..., None].to(tokens.dtype)
        pe = pe.clone()
        tokens = tokens.clone()
        pe[:, k2:k2 + nk] = br["keypoint_posemb_linear"](kp.to(tokens.dtype)) * valid
        sampled = sample_tokens(ctx, grid, kp * 2)
        tokens[:, k2:k2 + nk] += br["keypoint_feat_linear"](sampled * valid)
        kp3 = p["kp3d"]
        kp3 = kp3 - (kp3[:, PELVIS[0]] + kp3[:, PELVIS[1]])[:, None] / 2
        pe[:, k3:k3 + nk] = br["keypoint3d_posemb_linear"](kp3.to(tokens.dtype))
        return tokens, pe

    def decode(self, branch: str, feats: torch.Tensor, batch: CropBatch, prompts: torch.Tensor,
               prev: torch.Tensor | None = None, with_verts: bool = True,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """One promptable-decoder pass. prompts [B, N, 3] (x, y in [0,1], label); prev [B, NPOSE+3] or None.

        dtype: autocast dtype of the decoder's matmuls on GPU (norms, heads' outputs and the rig stay fp32).
        """
        dev = feats.device.type
        with torch.autocast(dev, dtype=dtype, enabled=dev == "cuda" and dtype != torch.float32):
            p = self._decode(branch, feats, batch, prompts, prev, with_verts)
        return p

    def _decode(self, branch: str, feats: torch.Tensor, batch: CropBatch, prompts: torch.Tensor,
                prev: torch.Tensor | None, with_verts: bool) -> dict[str, torch.Tensor]:
        br = _branch_modules(self, "" if branch == "body" else "_hand")
        n = feats.shape[0]
        init = torch.cat([br["init_pose"].weight, br["init_camera"].weight], 1).float().expand(n, -1)
        cond = self.condition(batch)
        tok0 = br["init_to_token_mhr"](torch.cat([cond, init], 1))[:, None]
        prev_tok = br["prev_to_token_mhr"](init if prev is None else prev.float())[:, None]
        prompt_tok = self.prompt_to_token(self.prompt_encoder.embed_points(prompts))
        extra = [self.hand_box_embedding.weight, br["keypoint_embedding"].weight, br["keypoint3d_embedding"].weight]
        extra = torch.cat(extra, 0)[None].expand(n, -1, -1)
        tokens = torch.cat([tok0, prev_tok, prompt_tok, extra], 1)
        pe = torch.cat([torch.zeros_like(tok0), prev_tok, prompt_tok, torch.zeros_like(extra)], 1)
        hand_start = 2 + prompts.shape[1]
        k2 = hand_start + 2
        k3 = k2 + self.cfg.num_keypoints
        g = feats.shape[-2:]
        pe_layer = self.prompt_encoder.pe_layer if branch == "body" else self.hand_pe_layer
        ctx_pe = pe_layer(*g).flatten(2).transpose(1, 2)  # [1, HW, C]: the same for every crop
        feats = br["ray_cond_emb"](feats, self.patch_rays(batch, br["ray_cond_emb"]))
        ctx = feats.flatten(2).transpose(1, 2)  # [B, HW, C], contiguous rows (channels-last feats)

        def between(i: int, normed: torch.Tensor, toks: torch.Tensor, tpe: torch.Tensor):
            p = self._pose_from_token(br, normed[:, 0], batch, with_verts=False)
            return self._update_tokens(br, p, ctx, g, toks, tpe, k2, k3)

        out = br["decoder"](tokens, ctx, pe, ctx_pe, between)
        p = self._pose_from_token(br, out[:, 0], batch, with_verts=with_verts)
        hand_tok = out[:, hand_start:hand_start + 2]
        hand_tok = hand_tok.float()
        with torch.autocast(hand_tok.device.type, enabled=False):
            p["hand_box"] = self.bbox_embed(hand_tok).sigmoid()  # [B, 2, 4] (cx, cy, w, h) in crop units
            p["hand_logits"] = self.hand_cls_embed(hand_tok)
        return p

    @staticmethod
    def prev_estimate(p: dict[str, torch.Tensor]) -> torch.Tensor:
        """The previous-estimate vector fed back as a prompt token (raw pose, shape, scale, hands, face, cam)."""
        return torch.cat([p["pose_raw"], p["shape"], p["scale"], p["hand"], p["face"], p["cam"]], 1)


def sample_tokens(ctx: torch.Tensor, grid: tuple[int, int], pts: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(map, pts, bilinear, zeros, align_corners=False)`` of the [B, C, h, w] map whose
    image tokens are ``ctx`` [B, h*w, C], at pts [B, K, 2] (x, y in [-1, 1]) -> [B, K, C].

    Gathers the four neighbouring token rows instead: grid_sample's kernel loops over the C channels
    of each of the B*K points (64 x 70 threads for 1280 channels), which is slow for wide maps.
    Non-finite points sample zeros, as points outside the map do.
    """
    h, w = grid
    b, _, c = ctx.shape
    pts = pts.to(ctx.dtype)
    ix = (((pts[..., 0] + 1) * w - 1) / 2).nan_to_num(-2.0, w + 1.0, -2.0).clamp(-2.0, w + 1.0)
    iy = (((pts[..., 1] + 1) * h - 1) / 2).nan_to_num(-2.0, h + 1.0, -2.0).clamp(-2.0, h + 1.0)
    x0, y0 = ix.floor(), iy.floor()
    out = ctx.new_zeros(b, pts.shape[1], c)
    for xi, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
        for yi, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            row = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            vals = torch.gather(ctx, 1, row[..., None].expand(-1, -1, c))
            out += vals * (wx * wy * inside)[..., None]
    return out
