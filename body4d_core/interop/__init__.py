"""ComfyUI's formats, as a plain library (no ComfyUI import): core types, weight files, workflows, the server API.

``sam3_track_data`` (our Tracks <-> core's SAM3_TRACK_DATA), ``mhr_pose_data`` (Bodies <->
core's MHR_POSE_DATA), ``sam3d_body_file`` (core's repackaged SAM-3D-Body safetensors),
``workflows`` (UI-format workflow -> API prompt, checked against /object_info) and
``api_client`` (a client for a running ComfyUI server).
"""
