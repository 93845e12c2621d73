"""Serving: ServeConfig -> Ray Serve app (app.py), the guarded OpenAI ingress (ingress.py),
`lmforge serve` (run.py)."""
