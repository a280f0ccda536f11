"""SAM-3D-Body (single-image human mesh recovery) re-implemented for batched video inference.

Public API: ``load_sam3d_body`` (official checkpoint folder -> model), ``estimate_bodies``
(frames + per-person boxes/masks -> MHR parameters), ``bodies_from_results`` (-> ``Bodies``).
"""

from .config import Sam3dBodyConfig, config_from_yaml, tiny_config
from .infer import BodyItem, bodies_from_results, estimate_bodies
from .load import load_sam3d_body
from .loader import read_checkpoint
from .model import Sam3dBody

__all__ = ["BodyItem", "Sam3dBody", "Sam3dBodyConfig", "bodies_from_results", "config_from_yaml",
           "estimate_bodies", "load_sam3d_body", "read_checkpoint", "tiny_config"]
