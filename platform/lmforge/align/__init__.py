"""Preference alignment glue above data and train: the reference pass and the prepare-preference stage."""
