"""What a data stage reports: counts that reconcile, quarantine, duplicate samples, pictures."""
