"""Benchmarks of the pipeline's stages, run from the repository root as ``python -m bench.<name>``.

Shared helpers live in small modules: ``timers`` (CUDA sync, stopwatches), ``peak_memory`` (GPU
and host peaks), ``clips`` (synthetic clips and frames), ``printing`` (tables), ``rows`` (the one
JSON row format every bench writes) and ``patching`` (temporary changes of module globals).
"""
