"""World-grounded motion: floor and gravity, camera motion, people in a shared world frame,
foot contacts and contact-aware smoothing (see docs/world.md for the frame convention)."""

from .stage import WorldOptions, WorldResult, ground_clip, world_stage

__all__ = ["WorldOptions", "WorldResult", "ground_clip", "world_stage"]
