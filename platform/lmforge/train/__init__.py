"""train stage components."""
