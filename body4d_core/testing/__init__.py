"""Test fixtures: tiny random models, random checkpoints in the official layouts, synthetic scenes.

Imported by tests, benchmarks and the ``tiny-checkpoints`` command only (lazily), never by the
library: ``checkpoints`` (every model's folder, tiny or real size), ``sam3``, ``body`` (SAM-3D-Body
and MHR rig), ``amodal`` (Diffusion-VAS, Depth Anything), ``moge`` and ``world`` (synthetic clips),
``batch`` (batch workers with faults built in).
"""
