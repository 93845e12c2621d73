"""serve stage components."""
