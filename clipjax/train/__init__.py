"""The shared training machinery: state, optimizer, checkpoints, metrics and the one train loop."""
