"""data stage components."""
