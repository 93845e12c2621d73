"""`serve run serve_apps.<app>:app` targets (the serve issue adds the chat app)."""
