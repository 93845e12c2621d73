"""convert stage components."""
