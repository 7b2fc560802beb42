"""What a run leaves on disk: its folder layout, atomic writes, the run lock, the summary, checkpoints."""
