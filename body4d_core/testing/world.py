"""Synthetic world-motion ground truth: people with planted feet, cameras, textured room, corrupted estimates.

People are a hand-made 70-keypoint skeleton in the MHR70 layout (keypoints the world stage
reads: hips, knees, ankles, heels, toes, shoulders, elbows, wrists, hands, neck, head) whose
feet follow footstep plans: a planted foot does not move, a swinging foot arcs to the next
footstep. Motions: walk, turn (walk on a circle), run (flight phases), jump, clap (standing,
fast hands). Cameras: static, pan, dolly, handheld shake. The background is a textured floor
and walls rendered per frame by ray casting, with its exact depth. Estimates are corrupted
like a monocular estimator's: depth error along the camera ray several times the lateral
error, per-joint jitter, outlier frames and dropped frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import PARAM_DIMS, Bodies, BodyFlag
from ..world.keypoints import NUM_KEYPOINTS

FPS = 30.0
HIP_W, THIGH, SHIN, ANKLE_H, FOOT_L, SOLE = 0.1, 0.46, 0.45, 0.08, 0.22, 0.02


@dataclass
class Scene:
    """Ground truth of one synthetic clip (world: y up, floor y = 0, metres)."""

    joints: np.ndarray  # [N, T, 70, 3] world keypoints
    contacts: np.ndarray  # bool [N, T, 4] (left heel, left toe, right heel, right toe)
    cam_R: np.ndarray  # [T, 3, 3] world-from-camera rotation (OpenCV camera axes)
    cam_c: np.ndarray  # [T, 3] camera centres
    K: np.ndarray  # [3, 3]
    image_size: tuple[int, int]
    heading: np.ndarray  # [N, T] body yaw (radians)
    name: str = ""
    frames: np.ndarray | None = None  # uint8 [T, H, W, 3]
    depth: np.ndarray | None = None  # [T, H, W]
    people_masks: np.ndarray | None = None  # bool [T, H, W]
    extras: dict = field(default_factory=dict)

    def camera_joints(self) -> np.ndarray:
        """Ground-truth keypoints in each frame's camera axes [N, T, 70, 3]."""
        rel = self.joints - self.cam_c[None, :, None, :]
        return np.einsum("tji,ntkj->ntki", self.cam_R, rel)


def _smoothstep(u: np.ndarray) -> np.ndarray:
    return u * u * (3.0 - 2.0 * u)


def _path(kind: str, s: np.ndarray, start: np.ndarray, yaw0: float) -> tuple[np.ndarray, np.ndarray]:
    """Points [.., 2] (x, z) and headings along a path at arc lengths s (straight or circle)."""
    if kind == "turn":
        r = 2.5
        ang = s / r
        cx, cz = start[0] + r * np.cos(yaw0), start[1] - r * np.sin(yaw0)
        # heading yaw: direction of travel (x = sin(yaw), z = cos(yaw)); turning left
        yaw = yaw0 + ang
        pts = np.stack([cx - r * np.cos(yaw), cz + r * np.sin(yaw)], -1)
        return pts, yaw
    d = np.array([np.sin(yaw0), np.cos(yaw0)])
    return start + s[..., None] * d, np.full(np.shape(s), yaw0)


def _two_link(hip: np.ndarray, ankle: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    """Knee positions [T, 3] bending forward, for thigh/shin lengths THIGH/SHIN."""
    d = ankle - hip
    L = np.clip(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6, THIGH + SHIN - 1e-4)
    u = d / np.linalg.norm(d, axis=-1, keepdims=True)
    a = (THIGH ** 2 - SHIN ** 2 + L ** 2) / (2 * L)
    h = np.sqrt(np.maximum(THIGH ** 2 - a ** 2, 0.0))
    bend = fwd - (fwd * u).sum(-1, keepdims=True) * u
    bend /= np.maximum(np.linalg.norm(bend, axis=-1, keepdims=True), 1e-9)
    return hip + a * u + h * bend


def person(kind: str, t: int, start=(0.0, 0.0), yaw0: float = np.pi / 2, phase: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World keypoints [T, 70, 3], contacts [T, 4] and heading [T] of one synthetic person."""
    time = np.arange(t) / FPS
    start = np.asarray(start, np.float64)
    speed = {"walk": 1.3, "turn": 1.2, "run": 3.0}.get(kind, 0.0)
    stance = 0.35 if kind == "run" else 0.62
    step = 1.1 if kind == "run" else 0.65  # metres per step
    period = 2 * step / speed if speed else 1.0  # stride period (s)
    s_root = speed * time
    root_xz, yaw = _path(kind, s_root, start, yaw0)
    root_y = np.full(t, 0.93)
    feet, contacts = [], np.zeros((t, 4), bool)
    for side, off in (("left", 0.0), ("right", 0.5)):
        lat_sign = 1.0 if side == "left" else -1.0
        if speed:
            cyc = time / period + off + phase
            c = np.floor(cyc)
            ph = cyc - c
            plant = lambda k: speed * period * (k - off - phase + stance / 2)  # noqa: E731
            s_a = plant(c)
            s_b = plant(c + 1)
            u = np.clip((ph - stance) / (1 - stance), 0, 1)
            s_foot = np.where(ph < stance, s_a, s_a + (s_b - s_a) * _smoothstep(u))
            lift = np.where(ph < stance, 0.0, np.sin(np.pi * u) * (0.18 if kind == "run" else 0.1))
            planted = ph < stance
        else:
            s_foot = np.zeros(t)
            lift = np.zeros(t)
            planted = np.ones(t, bool)
        pxz, fyaw = _path(kind, s_foot, start, yaw0)
        fwd = np.stack([np.sin(fyaw), np.zeros(t), np.cos(fyaw)], -1)
        lat = np.stack([np.cos(fyaw), np.zeros(t), -np.sin(fyaw)], -1) * lat_sign  # left of travel
        heel = np.stack([pxz[:, 0], np.full(t, SOLE), pxz[:, 1]], -1) + lat * HIP_W - fwd * 0.06
        heel[:, 1] += lift
        feet.append((heel, fwd, lat, planted))
    if kind == "jump":
        jumps = [(0.5, 0.95), (1.5, 1.95)]
        for a, b in jumps:
            inside = (time >= a) & (time <= b)
            u = (time[inside] - a) / (b - a)
            hgt = 0.3 * 4 * u * (1 - u)
            root_y[inside] += hgt
            for heel, _, _, planted in feet:
                heel[inside, 1] += hgt
                planted[inside] = False
            crouch = (time >= a - 0.25) & (time < a) | (time > b) & (time <= b + 0.25)
            u_c = np.clip(np.where(time < a, time - a + 0.25, time - b) / 0.25, 0, 1)
            root_y[crouch] -= 0.12 * np.sin(np.pi * u_c)[crouch]
    if kind == "run":
        root_y += 0.04 * np.cos(4 * np.pi * time / period)
    elif speed:
        root_y += 0.02 * np.cos(4 * np.pi * time / period)
    J = np.zeros((t, NUM_KEYPOINTS, 3))
    fwd_b = np.stack([np.sin(yaw), np.zeros(t), np.cos(yaw)], -1)
    lat_b = np.stack([np.cos(yaw), np.zeros(t), -np.sin(yaw)], -1)
    up = np.array([0.0, 1.0, 0.0])
    root = np.stack([root_xz[:, 0], root_y, root_xz[:, 1]], -1)
    for k, (side, (heel, ffwd, flat, planted)) in enumerate(zip(("left", "right"), feet)):
        sgn = 1.0 if side == "left" else -1.0
        hip = root + sgn * HIP_W * lat_b
        ankle = heel + ANKLE_H * up + 0.04 * ffwd
        toe = heel + FOOT_L * ffwd
        small = toe - 0.04 * ffwd + 0.05 * flat
        knee = _two_link(hip, ankle, fwd_b)
        ids = (9, 11, 13, 15, 16, 17) if side == "left" else (10, 12, 14, 18, 19, 20)
        for i, pt in zip(ids, (hip, knee, ankle, toe, small, heel)):
            J[:, i] = pt
        contacts[:, 2 * k] = planted
        contacts[:, 2 * k + 1] = planted
    neck = root + 0.52 * up
    J[:, 69] = neck
    J[:, 0] = neck + 0.2 * up + 0.1 * fwd_b
    for i, (a, b) in zip((1, 2, 3, 4), ((0.03, 0.23), (-0.03, 0.23), (0.08, 0.2), (-0.08, 0.2))):
        J[:, i] = neck + b * up + 0.07 * fwd_b + a * lat_b
    arm_phase = 2 * np.pi * time / period if speed else np.zeros(t)
    for side, sgn, sh_i, el_i, wr_i, hand in (("left", 1.0, 5, 7, 62, range(42, 62)),
                                               ("right", -1.0, 6, 8, 41, range(21, 41))):
        sh = neck - 0.04 * up + sgn * 0.19 * lat_b
        if kind == "clap":
            w = 2 * np.pi * 2.5 * time  # 2.5 claps per second
            open_ = 0.5 + 0.5 * np.cos(w)
            wrist = neck - 0.15 * up + 0.35 * fwd_b + sgn * (0.03 + 0.3 * open_)[:, None] * lat_b
            elbow = sh + 0.5 * (wrist - sh) - 0.12 * up + sgn * 0.08 * lat_b
        else:
            swing = 0.35 * np.sin(arm_phase + (0 if side == "left" else np.pi)) * (1.0 if speed else 0.0)
            elbow = sh - 0.28 * np.cos(swing)[:, None] * up + 0.28 * np.sin(-swing)[:, None] * fwd_b
            wrist = (elbow - 0.26 * np.cos(1.3 * swing)[:, None] * up
                     + 0.26 * (np.sin(-1.3 * swing) + 0.3)[:, None] * fwd_b)
        J[:, sh_i], J[:, el_i], J[:, wr_i] = sh, elbow, wrist
        fore = (wrist - elbow) / np.linalg.norm(wrist - elbow, axis=-1, keepdims=True)
        for j, hk in enumerate(hand):
            J[:, hk] = wrist + fore * (0.02 + 0.01 * (j % 5)) + sgn * 0.008 * (j // 5) * lat_b
        J[:, 63 if side == "left" else 64] = elbow - 0.03 * fore
        J[:, 65 if side == "left" else 66] = elbow + 0.03 * fore
        J[:, 67 if side == "left" else 68] = sh + 0.02 * up
    return J, contacts, yaw


def camera_path(kind: str, t: int, target: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """World-from-camera rotations [T, 3, 3] (OpenCV axes) and centres [T, 3] of a camera path."""
    rng = np.random.default_rng(seed)
    base = np.array([0.0, 1.6, 6.5]) + np.array([target[0], 0.0, target[2]])
    c = np.repeat(base[None], t, 0)
    look = np.repeat(np.asarray(target, np.float64)[None], t, 0)
    if kind == "pan":
        look[:, 0] += np.linspace(-1.5, 1.8, t)
    elif kind == "dolly":
        c[:, 0] += np.linspace(-1.2, 1.2, t)
        c[:, 2] += np.linspace(0.0, -0.8, t)
        look[:, 0] += np.linspace(-1.2, 1.2, t)
    elif kind == "handheld":
        from scipy.ndimage import gaussian_filter1d

        c += gaussian_filter1d(rng.normal(size=(t, 3)), 3.0, axis=0) * 0.03 / 0.23
        look += gaussian_filter1d(rng.normal(size=(t, 3)), 3.0, axis=0) * 0.12 / 0.23
    R = np.zeros((t, 3, 3))
    for i in range(t):
        f = look[i] - c[i]
        f /= np.linalg.norm(f)
        r = np.cross(f, [0.0, 1.0, 0.0])
        r /= np.linalg.norm(r)
        d = np.cross(f, r)
        R[i] = np.stack([r, d, f], 1)
    return R, c


def _texture(seed: int, size: int = 512) -> np.ndarray:
    """A tileable multi-scale noise texture (float32 [size, size] in 0..255)."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = np.zeros((size, size), np.float32)
    for cell, amp in ((4, 0.5), (16, 0.3), (64, 0.2)):
        n = size // cell
        small = rng.uniform(0, 1, (n, n)).astype(np.float32)
        big = cv2.resize(np.tile(small, (3, 3)), (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
        tex += amp * big[size:2 * size, size:2 * size]  # the middle tile of a 3x3 tiling: seamless
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return tex * 255.0


def render_room(R: np.ndarray, c: np.ndarray, K: np.ndarray, image_size: tuple[int, int], seed: int = 0,
                half_width: float = 9.0, back: float = -10.0, front: float = 12.0, height: float = 4.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Render a textured floor and walls seen by each camera: uint8 frames [T, H, W, 3] and depth [T, H, W]."""
    import cv2

    h, w = image_size
    tex = _texture(seed)
    size = tex.shape[0]
    uu, vv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_c = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1)
    frames = np.zeros((len(R), h, w, 3), np.uint8)
    depth = np.zeros((len(R), h, w), np.float32)
    planes = [(1, 0.0, (0, 2)), (1, height, (0, 2)), (2, back, (0, 1)), (2, front, (0, 1)),
              (0, -half_width, (2, 1)), (0, half_width, (2, 1))]
    for i in range(len(R)):
        d = rays_c @ R[i].T
        best = np.full((h, w), np.inf)
        coord = np.zeros((h, w, 2))
        shade = np.zeros((h, w))
        for k, (axis, val, (a, b)) in enumerate(planes):
            with np.errstate(divide="ignore", invalid="ignore"):
                tt = (val - c[i, axis]) / d[..., axis]
            ok = (tt > 0) & (tt < best)
            best = np.where(ok, tt, best)
            p = c[i] + d * tt[..., None]
            coord = np.where(ok[..., None], np.stack([p[..., a], p[..., b]], -1), coord)
            shade = np.where(ok, 0.6 + 0.08 * k, shade)
        px = (coord * 12.0) % size  # 12 texels per metre: no aliasing on the far walls
        img = cv2.remap(tex, px[..., 0].astype(np.float32), px[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_WRAP)
        g = np.clip(img * shade, 0, 255)
        frames[i] = np.stack([g, g * 0.9 + 10, g * 0.8 + 20], -1).clip(0, 255).astype(np.uint8)
        depth[i] = best  # rays have z = 1 in camera axes, so the ray parameter is the depth
    return frames, depth


def make_scene(motion: str, camera: str, people: int = 1, frames: int = 60, seed: int = 0,
               image_size: tuple[int, int] = (240, 320), focal: float = 300.0, render: bool = True) -> Scene:
    """One synthetic clip: ``people`` persons doing ``motion`` seen by a ``camera`` path."""
    layouts = [((-1.5, 0.0), np.pi / 2), ((1.5, -1.5), -np.pi / 2), ((-0.5, 1.5), np.pi / 2 + 0.3)]
    J, C, Y = [], [], []
    for k in range(people):
        (x0, z0), yaw0 = layouts[k]
        if motion in ("clap", "jump"):
            x0 += 1.5 * (k > 0) * (1 if k == 1 else -1)
            yaw0 = 0.0
        if motion == "run":
            x0 -= 1.5
        j, c, y = person(motion, frames, (x0, z0), yaw0, phase=0.21 * k)
        J.append(j), C.append(c), Y.append(y)
    joints = np.stack(J)
    h, w = image_size
    K = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1.0]])
    target = np.array([0.0, 0.9, 0.0])
    R, cc = camera_path(camera, frames, target, seed)
    scene = Scene(joints, np.stack(C), R, cc, K, (h, w), np.stack(Y), f"{motion}/{camera}/{people}p")
    if render:
        scene.frames, scene.depth = render_room(R, cc, K, (h, w), seed)
        scene.people_masks = people_masks(scene)
    return scene


def people_masks(scene: Scene, pad: float = 0.15) -> np.ndarray:
    """bool [T, H, W]: boxes around each person's projected keypoints (what the tracker's masks cover)."""
    h, w = scene.image_size
    cam = scene.camera_joints()
    out = np.zeros((cam.shape[1], h, w), bool)
    for n in range(cam.shape[0]):
        for t in range(cam.shape[1]):
            p = cam[n, t]
            if (p[:, 2] <= 0.1).any():
                continue
            uv = p[:, :2] / p[:, 2:] * scene.K[0, 0] + scene.K[:2, 2]
            x0, y0 = uv.min(0)
            x1, y1 = uv.max(0)
            dx, dy = pad * (x1 - x0), pad * (y1 - y0)
            out[t, max(0, int(y0 - dy)):max(0, int(y1 + dy) + 1), max(0, int(x0 - dx)):max(0, int(x1 + dx) + 1)] = True
    return out


@dataclass
class Corruption:
    """Monocular-estimator-like errors (metres unless noted)."""

    ray: float = 0.12  # root depth error along the camera ray (white)
    ray_bias: float = 0.06  # slowly varying depth error along the ray
    lateral: float = 0.02  # root error across the ray
    joint: float = 0.015  # per-joint jitter (isotropic)
    joint_depth: float = 0.03  # extra per-joint jitter along the camera z axis
    outliers: float = 0.04  # fraction of outlier frames
    drops: float = 0.05  # fraction of dropped frames


def corrupt(scene: Scene, cfg: Corruption | None = None, seed: int = 0) -> Bodies:
    """Camera-space Bodies as a monocular estimator would give them for this scene."""
    from scipy.ndimage import gaussian_filter1d

    cfg = cfg or Corruption()
    rng = np.random.default_rng(seed + 1000)
    cam = scene.camera_joints()
    n, t, k, _ = cam.shape
    root = 0.5 * (cam[:, :, 9] + cam[:, :, 10])
    ray = root / np.linalg.norm(root, axis=-1, keepdims=True)
    slow = gaussian_filter1d(rng.normal(0, 1, (n, t)), 8.0, axis=1) * 3.4  # unit spread after the filter
    d_ray = rng.normal(0, cfg.ray, (n, t)) + slow * cfg.ray_bias
    lat = rng.normal(0, cfg.lateral, (n, t, 3))
    lat -= (lat * ray).sum(-1, keepdims=True) * ray
    rel = cam - root[:, :, None]
    rel = rel + rng.normal(0, cfg.joint, rel.shape)
    rel[..., 2] += rng.normal(0, cfg.joint_depth, rel.shape[:3])
    out_frames = rng.uniform(size=(n, t)) < cfg.outliers
    d_ray = np.where(out_frames, d_ray + rng.choice([-1, 1], (n, t)) * rng.uniform(0.5, 1.0, (n, t)), d_ray)
    rel = np.where(out_frames[..., None, None], rel + rng.normal(0, 0.05, rel.shape), rel)
    root_est = root + d_ray[..., None] * ray + lat
    flags = np.full((n, t), BodyFlag.VISIBLE, np.uint8)
    flags[rng.uniform(size=(n, t)) < cfg.drops] = BodyFlag.MISSING
    flags[:, 0] = BodyFlag.VISIBLE
    params = {name: np.zeros((n, t, d), np.float32) for name, d in PARAM_DIMS.items()}
    params["cam_t"] = root_est.astype(np.float32)
    from scipy.spatial.transform import Rotation

    for i in range(n):
        Rwb = Rotation.from_euler("y", scene.heading[i][:, None]).as_matrix()  # [T, 3, 3]
        Rcb = np.einsum("tji,tjk->tik", scene.cam_R, Rwb)
        params["global_rot"][i] = Rotation.from_matrix(Rcb).as_euler("xyz").astype(np.float32)
    kp2 = (rel + root_est[:, :, None]) @ scene.K.T
    kp2 = kp2[..., :2] / kp2[..., 2:]
    miss = flags == BodyFlag.MISSING
    for arr in list(params.values()) + [rel, kp2]:
        arr[miss] = 0.0
    return Bodies(np.arange(1, n + 1), flags, params, scene.image_size, keypoints_3d=rel.astype(np.float32),
                  keypoints_2d=kp2.astype(np.float32), confidence=np.where(miss, 0.0, 1.0).astype(np.float32))


def noisy_depth(scene: Scene, scale_sigma: float = 0.02, pixel_sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    """The scene's depth as a monocular depth model would give it: a per-frame scale error and per-pixel noise."""
    rng = np.random.default_rng(seed + 7)
    t = scene.depth.shape[0]
    scale = 1.0 + rng.normal(0, scale_sigma, (t, 1, 1))
    return (scene.depth * scale * (1.0 + rng.normal(0, pixel_sigma, scene.depth.shape))).astype(np.float32)

