"""The floor under losses, heads and evals: the array operations and constants they share, importing nothing of
clipjax (see docs/ARCHITECTURE.md, "Floors")."""
