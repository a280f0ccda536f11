"""Many videos on many GPUs: the ``batch`` command (Ray workers, one per GPU).

Ray is an optional dependency, imported only by ``engine`` (and what the batch command runs);
``jobs``, ``outputs`` and ``shard`` are plain Python so they can be used and tested without it.
"""
