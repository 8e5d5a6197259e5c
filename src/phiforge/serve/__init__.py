"""OpenAI-compatible server (app.py), its continuous batcher (batcher.py) and the chat page (web/)."""
