"""Every socket type our nodes use, declared once.

Our own types carry the dataclasses of ``body4d_core.data``; core types are declared by
their core names so our sockets connect to ComfyUI's SAM3 / MoGe / SAM3D Body nodes.
"""

from comfy_api.latest import io

# Our data contracts (body4d_core.data)
Clip = io.Custom("BODY4D_CLIP")  # body4d_core.data.Clip
Prompts = io.Custom("BODY4D_PROMPTS")  # body4d_core.data.Prompts
Tracks = io.Custom("BODY4D_TRACKS")  # body4d_core.data.Tracks
Amodal = io.Custom("BODY4D_AMODAL")  # body4d_core.data.Amodal
Camera = io.Custom("BODY4D_CAMERA")  # body4d_core.data.Camera
Bodies = io.Custom("BODY4D_BODIES")  # body4d_core.data.Bodies
World = io.Custom("BODY4D_WORLD")  # body4d_core.world.WorldResult

# Loaded models (nodes.comfy_glue.ModelHandle)
Sam3Model = io.Custom("BODY4D_SAM3_MODEL")
BodyModel = io.Custom("BODY4D_SAM3D_BODY_MODEL")
AmodalModel = io.Custom("BODY4D_AMODAL_MODEL")
MoGeModel = io.Custom("BODY4D_MOGE_MODEL")

# ComfyUI core types we read or write (same names as core, so sockets connect)
Sam3TrackData = io.Custom("SAM3_TRACK_DATA")
MoGeGeometry = io.Custom("MOGE_GEOMETRY")
MhrPoseData = io.Custom("MHR_POSE_DATA")
