"""Our Diffusion-VAS sampler on diffusers components (SVD-style video diffusion).

Facts from the public Diffusion-VAS pipeline that this reproduces: two conditions, both
VAE-encoded (``latent_dist.mode()``, unscaled, after noise augmentation) and concatenated
to the noisy latents on the channel axis ([latents, first, second] = 12 channels); one CLIP
image embedding per frame, taken from the clean first condition; classifier-free guidance
with zero embeddings and zero condition latents as the unconditional branch, constant
guidance (min = max); added time ids (fps - 1, motion bucket, noise aug); Euler scheduler;
chunked temporal-VAE decoding. ``embed_order="upstream"`` keeps the released pipeline's
CFG context layout, where per-frame [uncond, cond] embedding pairs are concatenated
frame-major and so reach the UNet interleaved; ``"aligned"`` gives frame f its own embedding.
Noise is drawn per video from a CPU generator in upstream's order (first-condition noise,
second-condition noise, initial latents), so results do not depend on batching.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..alloc import Alloc, zeros
from ..errors import MissingWeightsError, WeightsMismatchError
from ..runtime import NULL_HOOKS, Hooks, autocast, run_with_oom_retry
from .accel import AccelConfig, apply_accel, apply_vae_accel
from .config import SamplerConfig
from .job import VideoJob
from .lowmem import LowMemory, chunked, placed, unet_placed
from .occlusion import blend_weights, plan_windows
from .unet import VASUNet

log = logging.getLogger(__name__)

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UNET_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def _rgb3(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, -1, 3, -1, -1) if x.shape[2] == 1 else x


def _channels3(x: torch.Tensor) -> int:
    """Channels of a job condition [T, C, h, w] after ``_rgb3``."""
    return 3 if x.shape[1] == 1 else int(x.shape[1])


def _antialias_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SVD's CLIP resize (gaussian blur, then bicubic with aligned corners)."""
    try:
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )
    except ImportError:  # pragma: no cover - older/newer diffusers layouts
        return F.interpolate(x, size=size, mode="bicubic", align_corners=True, antialias=True)
    return _resize_with_antialiasing(x, size)


class VASPipeline:
    """Diffusion-VAS video-to-video sampler: (first, second condition) -> frames in [0, 1]."""

    def __init__(self, unet: VASUNet, vae, image_encoder, scheduler, clip_mean: Sequence[float] = CLIP_MEAN,
                 clip_std: Sequence[float] = CLIP_STD, dtype: torch.dtype = torch.float32) -> None:
        self.unet, self.vae, self.image_encoder, self.scheduler = unet, vae, image_encoder, scheduler
        self.clip_mean = torch.tensor(clip_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(clip_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.dtype = dtype
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self._base_processors = dict(unet.attn_processors) if hasattr(unet, "attn_processors") else None
        self.profile: dict[str, float] | None = None  # set to {} to count UNet work and time the parts
        self.compute_device: torch.device | None = None  # LowMemory.per_network: where the CPU-held networks run

    def accelerate(self, cfg: AccelConfig | None = None) -> "VASPipeline":
        """Apply speed/memory options to the UNet and VAE (None or AccelConfig() = the reference path)."""
        apply_accel(self.unet, cfg or AccelConfig(), self._base_processors)
        apply_vae_accel(self.vae, cfg or AccelConfig())
        return self

    @property
    def accel(self) -> AccelConfig:
        """The options in force (``accelerate``)."""
        return getattr(self.unet, "_accel", None) or AccelConfig()

    def _count(self, key: str, n: int) -> None:
        """Add ``n`` to profile[key] (work counters); no-op unless profiling."""
        if self.profile is not None:
            self.profile[key] = self.profile.get(key, 0) + n

    def _tick(self, key: str, since: float) -> float:
        """Add the seconds since ``since`` to profile[key] (synchronising CUDA); no-op unless profiling."""
        if self.profile is None:
            return since
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.profile[key] = self.profile.get(key, 0.0) + now - since
        return now

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, weight_dtype: torch.dtype | None = None,
                        fast: bool = False) -> "VASPipeline":
        """Load a diffusers pipeline folder (unet/, vae/, image_encoder/, scheduler/, feature_extractor/).

        ``dtype`` is the compute precision; weights are stored in ``weight_dtype`` (default:
        ``dtype`` on CUDA, fp32 on the CPU) and placed on ``device``. fast: the UNet and the CLIP
        encoder are built without random init and their tensors cast on ``device`` (same values;
        body4d_core.fastload); anything not in the expected layout goes through the library loaders,
        whose errors are clear.
        """
        from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
        from transformers import CLIPVisionModelWithProjection

        directory = Path(directory)
        if weight_dtype is None:
            weight_dtype = dtype if torch.device(device).type == "cuda" else torch.float32
        for sub in ("unet", "vae", "image_encoder", "scheduler"):
            if not (directory / sub).is_dir():
                raise MissingWeightsError(f"{directory} is not a Diffusion-VAS pipeline folder: no {sub}/ inside")
        dev = torch.device(device)
        unet = (fast and _load_unet_fast(directory / "unet", dev, weight_dtype)) \
            or load_vas_unet(directory / "unet", weight_dtype)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(directory / "vae", torch_dtype=weight_dtype)
        enc = None
        if fast:
            from ..fastload import load_transformers

            enc = load_transformers(CLIPVisionModelWithProjection, directory / "image_encoder", weight_dtype, dev)
        enc = enc or CLIPVisionModelWithProjection.from_pretrained(directory / "image_encoder", dtype=weight_dtype)
        sched = EulerDiscreteScheduler.from_pretrained(directory / "scheduler")
        mean, std = CLIP_MEAN, CLIP_STD
        fe = directory / "feature_extractor" / "preprocessor_config.json"
        if fe.is_file():
            cfg = json.loads(fe.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        pipe = cls(unet, vae, enc, sched, mean, std, dtype)
        return pipe.to(device)

    def to(self, device: torch.device | str) -> "VASPipeline":
        """Move every network to ``device`` (weights stay in their dtype)."""
        for m in (self.unet, self.vae, self.image_encoder):
            m.to(device).eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the sampler computes: the UNet's device, or ``compute_device`` while the networks are held
        on the CPU (LowMemory.per_network)."""
        return self.compute_device or next(self.unet.parameters()).device

    def models(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.image_encoder]

    # ------------------------------------------------------------------ pieces

    def _clip_embeds(self, cond: torch.Tensor) -> torch.Tensor:
        """[N, 3, h, w] in [-1, 1] -> CLIP image embeddings [N, D]."""
        x = _antialias_resize(cond.float(), (CLIP_SIZE, CLIP_SIZE))
        x = ((x + 1.0) / 2.0 - self.clip_mean.to(x.device)) / self.clip_std.to(x.device)
        enc_dtype = next(self.image_encoder.parameters()).dtype
        return self.image_encoder(pixel_values=x.to(enc_dtype)).image_embeds.float()

    def _amp(self):
        """The compute-precision context: autocast to ``dtype``, or none with AccelConfig.native_dtype."""
        if self.accel.native_dtype:
            return contextlib.nullcontext()
        return autocast(self.device, self.dtype)

    def _vae_context(self):
        """fp16 VAEs flagged force_upcast run in fp32 (upstream does the same); AccelConfig.vae_native: no autocast."""
        if self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            return torch.autocast(self.device.type, enabled=False)
        if self.accel.vae_native:
            return contextlib.nullcontext()
        return self._amp()

    def _encode(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """[N, 3, h, w] in [-1, 1] -> unscaled latent modes [N, 4, h/8, w/8] (frames encode independently).

        ``chunk`` frames per call; None = AccelConfig.encode_px frame-pixels per call (0: 8 frames).
        """
        if chunk is None:
            px = self.accel.encode_px
            chunk = max(1, px // (x.shape[-2] * x.shape[-1])) if px else 8
        vdtype = next(self.vae.parameters()).dtype
        if self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)
            vdtype = torch.float32
        with self._vae_context():
            out = [self.vae.encode(x[i:i + chunk].to(vdtype)).latent_dist.mode().float()
                   for i in range(0, x.shape[0], chunk)]
        self._count("encode_calls", len(out))
        self._count("encode_frames", int(x.shape[0]))
        return torch.cat(out)

    def _decode(self, latents: torch.Tensor, chunk: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, 4, h, w] -> frames [B, T, 3, H, W] in [0, 1]; each video in chunks of ``chunk`` frames.

        The temporal decoder sees one chunk at a time, so chunks are independent: with
        ``skip_unkept`` chunks without a ``keep`` frame (bool [B, T]) are not decoded (zeros);
        with ``decode_px`` equal-length chunks of several videos share one call.
        """
        cfg = self.accel
        b, t = latents.shape[:2]
        hh, ww = latents.shape[-2] * self.vae_scale, latents.shape[-1] * self.vae_scale
        items = decode_items(b, t, chunk, keep if cfg.skip_unkept else None)
        vdtype = next(self.vae.parameters()).dtype
        z = latents / self.vae.config.scaling_factor
        out = torch.zeros(b, t, 3, hh, ww, device=latents.device)
        with self._vae_context():
            for n, calls in decode_calls(items, cfg.decode_px // (hh * ww)):  # decode_px 0: a chunk per call
                zz = torch.cat([z[v, s:s + n] for v, s, _ in calls])
                dec = self._vae_decode(zz.to(vdtype), n, compiled=n == chunk).float()
                for k, (v, s, _) in enumerate(calls):
                    out[v, s:s + n] = (dec[k * n:(k + 1) * n] / 2 + 0.5).clamp(0, 1)
                self._count("decode_calls", 1)
                self._count("decode_frames", int(zz.shape[0]))
        return out

    def _vae_decode(self, z: torch.Tensor, num_frames: int, compiled: bool = False) -> torch.Tensor:
        """One temporal-VAE decode call; ``compiled``: through the compiled decoder if there is one."""
        dec = self.vae.__dict__.get("compiled_decoder") if compiled else None
        if dec is None:
            return self.vae.decode(z, num_frames=num_frames).sample
        indicator = torch.zeros(z.shape[0] // num_frames, num_frames, dtype=z.dtype, device=z.device)
        return dec(z, num_frames=num_frames, image_only_indicator=indicator)

    def _context(self, pos: torch.Tensor, order: str) -> torch.Tensor:
        """Per-frame embeddings [B, T, D] -> CFG context [2B*T, 1, D] (uncond batch first)."""
        b, t, d = pos.shape
        zeros = torch.zeros_like(pos)
        if order == "aligned":
            ctx = torch.cat([zeros, pos], dim=0)
        else:
            pairs = torch.stack([zeros, pos], dim=2).reshape(b, 2 * t, d)
            ctx = torch.cat([pairs[:, :t], pairs[:, t:]], dim=0)
        return ctx.reshape(2 * b * t, 1, d)

    # ------------------------------------------------------------------ sampling

    @staticmethod
    def draw_noise(seed: int, shape_a: Sequence[int], shape_b: Sequence[int], lat_shape: Sequence[int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One video's noise from its own CPU generator, in upstream's order (first, second condition, latents)."""
        g = torch.Generator("cpu").manual_seed(int(seed))
        return (torch.randn(tuple(shape_a), generator=g), torch.randn(tuple(shape_b), generator=g),
                torch.randn(tuple(lat_shape), generator=g))

    def latent_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
        """Latent shape [T, C, h/8, w/8] of a video of ``t`` frames at (h, w)."""
        return t, self.latent_channels, h // self.vae_scale, w // self.vae_scale

    @torch.no_grad()
    def generate(self, cond_a: torch.Tensor, cond_b: torch.Tensor, seeds: Sequence[int], sampler: SamplerConfig,
                 hooks: Hooks = NULL_HOOKS, noise: Sequence[tuple[torch.Tensor, ...]] | None = None,
                 keep: torch.Tensor | None = None, memory: LowMemory = LowMemory()) -> torch.Tensor:
        """Denoise B videos: conditions [B, T, C, h, w] in [-1, 1] -> frames [B, T, 3, h, w] in [0, 1].

        ``noise``: per video the output of ``draw_noise`` for its seed (drawn ahead, e.g. on a
        worker thread); None draws it here. Either way the numbers are the same. ``keep``
        (bool [B, T]): the frames the caller reads; with AccelConfig.skip_unkept the decode
        chunks without one are skipped and come back as zeros (kept frames are unchanged).
        ``memory``: the memory plan's low-memory mode (amodal/lowmem.py; same numbers up to GEMM rounding).
        """
        return self.generate_runs([(cond_a, cond_b, seeds, noise, keep)], sampler, hooks, memory)[0]

    def generate_runs(self, runs: Sequence[tuple], sampler: SamplerConfig, hooks: Hooks = NULL_HOOKS,
                      memory: LowMemory = LowMemory()) -> list[torch.Tensor]:
        """``generate`` for several video batches of different lengths, each (cond_a, cond_b, seeds, noise,
        keep) as ``generate`` takes them: their UNet calls are one ``VASUNet.forward_runs`` call per step
        (AccelConfig.mixed_lengths; the same numbers as one ``generate`` each, up to GEMM batch rounding)."""
        preps = [self._prepare(ca, cb, seeds, sampler, noise, memory) for ca, cb, seeds, noise, _ in runs]
        t0 = time.perf_counter()
        latents = self._denoise(preps, sampler, hooks, memory)
        t0 = self._tick("denoise", t0)
        split = memory.per_network
        outs = []
        with placed(self.vae, self.device, split), chunked([self.vae.decoder], memory):
            for lat, (*_, keep) in zip(latents, runs):
                outs.append(self._decode(lat, sampler.decode_chunk_size, keep))
        self._tick("decode", t0)
        return outs

    def _prepare(self, cond_a: torch.Tensor, cond_b: torch.Tensor, seeds: Sequence[int], sampler: SamplerConfig,
                 noise: Sequence[tuple[torch.Tensor, ...]] | None, memory: LowMemory) -> dict:
        """One batch's noise, CLIP embeddings and condition latents, before denoising: its CFG condition
        latents [2B, T, 8, h, w], context, added time ids and latent noise [B, T, 4, h, w]."""
        t_start = time.perf_counter()
        dev = self.device
        cond_a, cond_b = cond_a.float(), cond_b.float()  # 1-channel conditions travel as 1 channel
        b, t, _, h, w = cond_a.shape
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"height and width must be multiples of {self.vae_scale}, got {(h, w)}")
        lat_shape = self.latent_shape(t, h, w)
        if noise is None:
            noise = [self.draw_noise(s, _rgb3(cond_a).shape[1:], _rgb3(cond_b).shape[1:], lat_shape) for s in seeds]
        if len(noise) != b:
            raise ValueError(f"got noise for {len(noise)} videos, expected {b}")
        aug = sampler.noise_aug_strength
        t0 = self._tick("noise", t_start)
        a = _rgb3(cond_a.to(dev))
        noise_a = torch.stack([n[0] for n in noise]).to(dev)
        t0 = self._tick("upload", t0)
        split = memory.per_network
        with self._amp(), placed(self.image_encoder, dev, split):
            pos = self._clip_embeds(a.flatten(0, 1)).reshape(b, t, -1)
        t0 = self._tick("clip", t0)
        enc = memory.encode_frames or None
        with placed(self.vae, dev, split):
            lat_a = self._encode((a + aug * noise_a).flatten(0, 1), enc).reshape(b, t, *lat_shape[1:])
            del a, noise_a
            t0 = self._tick("encode", t0)
            cond_b = _rgb3(cond_b.to(dev)) + aug * torch.stack([n[1] for n in noise]).to(dev)
            t0 = self._tick("upload", t0)
            lat_b = self._encode(cond_b.flatten(0, 1), enc).reshape(b, t, *lat_shape[1:])
            del cond_b
        cond_lat = torch.cat([torch.cat([torch.zeros_like(lat_a), lat_a]), torch.cat([torch.zeros_like(lat_b), lat_b])],
                             dim=2)
        ids = torch.tensor([[sampler.fps - 1, sampler.motion_bucket_id, aug]], dtype=torch.float32, device=dev)
        prep = {"cond_lat": cond_lat, "ctx": self._context(pos, sampler.embed_order), "ids": ids.repeat(2 * b, 1),
                "noise": torch.stack([n[2] for n in noise]).to(dev)}
        self._tick("encode", t0)
        return prep

    def _denoise(self, preps: list[dict], sampler: SamplerConfig, hooks: Hooks, memory: LowMemory
                 ) -> list[torch.Tensor]:
        """The sampling loop over prepared batches -> their final latents. One batch: one UNet call per step
        (two with sequential CFG), as ever; several: one ``forward_runs`` call per step, and the scheduler's
        elementwise step over all their latents at once (it steps once per timestep)."""
        dev, g = self.device, sampler.guidance
        udtype = next(self.unet.parameters()).dtype
        halves = 2 if memory.sequential_cfg else 1
        self.scheduler.set_timesteps(sampler.steps, device=dev)
        latents = [p["noise"] * self.scheduler.init_noise_sigma for p in preps]
        with unet_placed(self.unet, dev, memory), chunked([self.unet], memory):
            for i, tstep in enumerate(self.scheduler.timesteps):
                hooks.check_interrupt()
                inps = [torch.cat([self.scheduler.scale_model_input(torch.cat([lat, lat]), tstep), p["cond_lat"]],
                                  dim=2) for lat, p in zip(latents, preps)]
                with self._amp():
                    if len(preps) == 1:
                        preds = [self._unet_cfg(inps[0].to(udtype), tstep, preps[0]["ctx"].to(udtype),
                                                preps[0]["ids"].to(udtype), halves)]
                    else:
                        preds = [o.float() for o in self.unet.forward_runs(
                            [x.to(udtype) for x in inps], tstep, [p["ctx"].to(udtype) for p in preps],
                            [p["ids"].to(udtype) for p in preps])]
                eps = []
                for pred in preds:
                    unc, con = pred.chunk(2)
                    eps.append(unc + g * (con - unc) if g != 1.0 else con)
                if len(preps) == 1:
                    latents = [self.scheduler.step(eps[0], tstep, latents[0]).prev_sample.float()]
                else:
                    flat = self.scheduler.step(torch.cat([e.flatten(0, 1) for e in eps]), tstep,
                                               torch.cat([lat.flatten(0, 1) for lat in latents])).prev_sample.float()
                    latents = [f.reshape(lat.shape) for f, lat in
                               zip(flat.split([lat.shape[0] * lat.shape[1] for lat in latents]), latents)]
        if self.profile is not None:
            calls = halves if len(preps) == 1 else 1
            self.profile["unet_calls"] = self.profile.get("unet_calls", 0) + calls * len(self.scheduler.timesteps)
            self.profile["unet_frames"] = self.profile.get("unet_frames", 0) + sum(
                2 * lat.shape[0] * lat.shape[1] for lat in latents) * len(self.scheduler.timesteps)
        return latents

    def _unet_cfg(self, inp: torch.Tensor, tstep: torch.Tensor, ctx: torch.Tensor, ids: torch.Tensor,
                  halves: int) -> torch.Tensor:
        """The UNet on the CFG batch [uncond B; cond B] in one call (halves 1) or one call per half (2: the
        rows are independent, so the same numbers up to GEMM batch rounding, with half the activations)."""
        if halves == 1:
            return self.unet(inp, tstep, ctx, ids)[0].float()
        n, rows = inp.shape[0] // 2, ctx.shape[0] // 2
        return torch.cat([self.unet(inp[k * n:(k + 1) * n], tstep, ctx[k * rows:(k + 1) * rows],
                                    ids[k * n:(k + 1) * n])[0].float() for k in range(2)])

    def run_jobs(self, jobs: Sequence[VideoJob], sampler: SamplerConfig, hooks: Hooks = NULL_HOOKS,
                 budget_px: int = 1 << 20, memory: LowMemory = LowMemory(), device: torch.device | None = None,
                 out_alloc: Alloc | None = None) -> list[torch.Tensor]:
        """Denoise many videos of any length: windows with cross-faded overlaps, videos batched.

        ``budget_px`` caps latent pixels x frames x 2 (CFG) per UNet call; a CUDA OOM halves
        the batch. Each window's noise is drawn on worker threads (one generator per window,
        so the numbers do not change) while the previous batch runs. Returns frames
        [T, 3, h, w] in [0, 1] on the CPU, one per job. With AccelConfig.skip_unkept, windows
        with no kept frame (``VideoJob.keep``) are not run and frames not kept may be zeros.
        ``memory``: the memory plan's low-memory mode (``generate``); ``device``: where to compute while the
        networks are held on the CPU (LowMemory.per_network; None: where the UNet is); ``out_alloc(shape, dtype)``:
        where each job's zero-filled float32 output is allocated (e.g. ``FrameStore.empty``; None: RAM).
        """
        if device is not None:
            self.compute_device = torch.device(device)
            try:
                return self.run_jobs(jobs, sampler, hooks, budget_px, memory, out_alloc=out_alloc)
            finally:
                self.compute_device = None
        plans = {j: plan_windows(0, job.length, sampler.window, sampler.overlap) for j, job in enumerate(jobs)}
        weights = {j: dict(zip(w, blend_weights(w, 0, jobs[j].length))) for j, w in plans.items()}
        outs = [torch.from_numpy(zeros(out_alloc, (job.length, 3, *job.cond_a.shape[-2:]), np.float32))
                if out_alloc is not None else torch.zeros(job.length, 3, *job.cond_a.shape[-2:]) for job in jobs]
        skip = self.accel.skip_unkept
        # the low-memory modes and compiled blocks keep one length a call
        mixed = self.accel.mixed_lengths and not memory.active and not self.accel.compile_blocks
        groups: dict[tuple, list[tuple[int, int, int]]] = {}
        for j, w in plans.items():
            for s, e in w:
                if skip and not window_keep(jobs[j], s, e, weights[j][(s, e)]).any():
                    continue
                groups.setdefault((0 if mixed else e - s, tuple(jobs[j].cond_a.shape[-2:])), []).append((j, s, e))
        if mixed:  # longest windows first, so each call's videos have similar lengths
            groups = {k: sorted(v, key=lambda it: it[1] - it[2]) for k, v in groups.items()}
        total, done = sum(len(v) for v in groups.values()), 0
        with NoisePrefetcher(self, jobs, sampler) as noise:
            for (_, (h, w)), items in groups.items():
                lat_px = (h // self.vae_scale) * (w // self.vae_scale)
                length = max(e - s for _, s, e in items)  # the budget as if every window were the longest
                per = max(1, min(sampler.people_batch, budget_px // max(1, 2 * length * lat_px)))

                def run(start: int, stop: int, items: list = items) -> None:
                    batch = items[start:stop]
                    noise.prefetch(items[stop:stop + len(batch)])
                    res = self._run_batch(jobs, batch, sampler, hooks, noise.take(batch), weights, memory)
                    t0 = time.perf_counter()
                    for (j, s, e), frames in zip(batch, res):
                        outs[j][s:e] += frames * torch.from_numpy(weights[j][(s, e)]).view(-1, 1, 1, 1)
                    self._tick("blend", t0)
                    noise.forget(batch)

                # the library's one OOM policy: a CUDA OOM halves the videos per batch, down to one
                run_with_oom_retry(run, len(items), per, _Offset(hooks, done, total))
                done += len(items)
        return outs

    def window_seed(self, job: VideoJob, start: int, sampler: SamplerConfig) -> int:
        """The seed of one window of a job (depends only on the job and where the window starts)."""
        return sampler.seed + 1_000_003 * job.seed_key + start

    def _run_batch(self, jobs: Sequence[VideoJob], batch: list[tuple[int, int, int]], sampler: SamplerConfig,
                   hooks: Hooks, noise: Sequence[tuple[torch.Tensor, ...]] | None = None,
                   weights: dict | None = None, memory: LowMemory = LowMemory()) -> list[torch.Tensor]:
        """The batch's windows denoised, one [T, 3, h, w] CPU tensor each, in the batch's order (windows of one
        length share a ``generate_runs`` run)."""
        runs: dict[int, list[int]] = {}  # window length -> positions in the batch (one run per length)
        for k, (_, s, e) in enumerate(batch):
            runs.setdefault(e - s, []).append(k)
        args = []
        for ks in runs.values():
            part = [batch[k] for k in ks]
            keep = None
            if weights is not None:
                keep = torch.from_numpy(np.stack([window_keep(jobs[j], s, e, weights[j][(s, e)]) for j, s, e in part]))
            args.append((torch.stack([jobs[j].cond_a[s:e] for j, s, e in part]),
                         torch.stack([jobs[j].cond_b[s:e] for j, s, e in part]),
                         [self.window_seed(jobs[j], s, sampler) for j, s, _ in part],
                         None if noise is None else [noise[k] for k in ks], keep))
        outs = self.generate_runs(args, sampler, hooks, memory)
        t0 = time.perf_counter()
        res: list[torch.Tensor | None] = [None] * len(batch)
        for ks, out in zip(runs.values(), outs):
            for k, frames in zip(ks, out.cpu()):
                res[k] = frames
        self._tick("download", t0)
        return res


def window_keep(job: VideoJob, start: int, stop: int, weight: np.ndarray) -> np.ndarray:
    """bool [stop - start]: frames of one window that reach a kept output frame (kept, blend weight > 0)."""
    return job.kept[start:stop] & (np.asarray(weight) > 0)


def decode_items(b: int, t: int, chunk: int, keep: torch.Tensor | np.ndarray | None = None
                 ) -> list[tuple[int, int, int]]:
    """Decode chunks (video, start, length) of B videos of T frames; with ``keep`` [B, T] only those holding one."""
    items = [(v, s, min(chunk, t - s)) for v in range(b) for s in range(0, t, chunk)]
    if keep is None:
        return items
    keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
    if tuple(keep.shape) != (b, t):
        raise ValueError(f"keep must be [{b}, {t}], got {tuple(keep.shape)}")
    return [(v, s, n) for v, s, n in items if bool(keep[v, s:s + n].any())]


def decode_calls(items: Sequence[tuple[int, int, int]], max_frames: int
                 ) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Group decode chunks of equal length into calls of at most ``max_frames`` frames (at least one
    chunk each): [(length, chunks)]."""
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for it in items:
        by_len.setdefault(it[2], []).append(it)
    out = []
    for n, group in by_len.items():
        per = max(1, max_frames // n)
        out += [(n, group[i:i + per]) for i in range(0, len(group), per)]
    return out


class NoisePrefetcher:
    """Draws windows' noise on worker threads, ahead of the batch that needs it (results unchanged).

    Each window has its own CPU generator, so windows can be drawn in parallel and in any
    order; torch's random kernels release the GIL, so this overlaps the GPU work.
    """

    def __init__(self, pipe: VASPipeline, jobs: Sequence[VideoJob], sampler: SamplerConfig,
                 workers: int | None = None) -> None:
        self.pipe, self.jobs, self.sampler = pipe, jobs, sampler
        self.workers = workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.pending: dict[tuple[int, int, int], Future] = {}
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "NoisePrefetcher":
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vas-noise")
        return self

    def __exit__(self, *exc) -> None:
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _draw(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
        j, s, e = item
        job = self.jobs[j]
        shape_a = (e - s, _channels3(job.cond_a), *job.cond_a.shape[-2:])
        shape_b = (e - s, _channels3(job.cond_b), *job.cond_b.shape[-2:])
        lat = self.pipe.latent_shape(e - s, *job.cond_a.shape[-2:])
        return VASPipeline.draw_noise(self.pipe.window_seed(job, s, self.sampler), shape_a, shape_b, lat)

    def prefetch(self, items: Sequence[tuple[int, int, int]]) -> None:
        """Start drawing the noise of ``items`` (no-op for those already started)."""
        for it in items:
            if it not in self.pending:
                self.pending[it] = self.pool.submit(self._draw, it)

    def take(self, items: Sequence[tuple[int, int, int]]) -> list[tuple[torch.Tensor, ...]]:
        """The noise of ``items`` (waits for it; started now if never prefetched); kept until ``forget``."""
        self.prefetch(items)
        return [self.pending[it].result() for it in items]

    def forget(self, items: Sequence[tuple[int, int, int]]) -> None:
        """Drop the noise of finished ``items``."""
        for it in items:
            self.pending.pop(it, None)


def _load_unet_fast(directory: Path, device: torch.device, weight_dtype: torch.dtype) -> VASUNet | None:
    """load_vas_unet's result (same values) from a safetensors UNet, tensors cast on ``device``; None otherwise."""
    from ..fastload import assign_state, read_safetensors, state_keys

    cfg_path = directory / "config.json"
    weights = next((directory / n for n in UNET_WEIGHT_NAMES if (directory / n).is_file()), None)
    if not cfg_path.is_file() or weights is None or weights.suffix != ".safetensors":
        return None  # load_vas_unet reads other formats or names what is missing
    try:
        config = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
        with torch.device("meta"):
            unet = VASUNet(**config)
        own = state_keys(unet)
        state = read_safetensors(weights, lambda k: k, device, weight_dtype)
        if set(state) != set(own) or any(tuple(v.shape) != own[k] for k, v in state.items()):
            return None
        assign_state(unet, state)
    except Exception:  # noqa: BLE001 - load_vas_unet reports it
        return None
    return unet.to(weight_dtype)


def load_vas_unet(directory: Path, dtype: torch.dtype = torch.float32) -> VASUNet:
    """Build the VAS UNet from ``config.json`` and load its weights (safetensors or weights-only torch)."""
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise MissingWeightsError(f"no config.json in {directory}")
    config = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
    weights = next((directory / n for n in UNET_WEIGHT_NAMES if (directory / n).is_file()), None)
    if weights is None:
        raise MissingWeightsError(f"no UNet weights in {directory} (expected one of {', '.join(UNET_WEIGHT_NAMES)})")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if "conv_in2.weight" not in state:
        raise WeightsMismatchError(f"{weights} has no conv_in2: this is not a Diffusion-VAS UNet")
    with torch.device("meta"):
        unet = VASUNet(**config)
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise WeightsMismatchError(f"{weights} does not match its config.json: {err}") from err
    return unet.to(dtype)


class _Offset:
    """Hooks for one group of windows: progress counted on from the windows before it."""

    def __init__(self, hooks: Hooks, before: int, total: int) -> None:
        self.hooks, self.before, self.total = hooks, before, total

    def progress(self, done: int, total: int) -> None:
        self.hooks.progress(self.before + done, self.total)

    def check_interrupt(self) -> None:
        self.hooks.check_interrupt()
