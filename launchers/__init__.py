"""Process-level pieces: the Ray replica actor, the engine backends and the SLURM sweep."""
