"""`serve run serve_apps.<app>:app` targets: chat (a converted model behind the OpenAI API)."""
