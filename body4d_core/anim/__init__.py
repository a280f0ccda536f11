"""Animation exports people can use: a skinned glTF scene, BVH, per-frame flags (see docs/animation.md)."""

from .motion import (FLAG_NAMES, PersonMotion, frame_flags, model_params, rig_data, scene_motions,
                     supports_skinned_export)
from .world_input import Floor, SceneWorld
from .writer import FORMATS, animation_files, write_animation

__all__ = ["FLAG_NAMES", "FORMATS", "Floor", "PersonMotion", "SceneWorld", "animation_files", "frame_flags",
           "model_params", "rig_data", "scene_motions", "supports_skinned_export", "write_animation"]
