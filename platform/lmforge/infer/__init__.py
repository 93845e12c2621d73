"""infer stage components."""
