"""`loratune ui`: a Gradio web UI over the same library and CLI (training runs as the CLI in the background)."""

from loratune.ui.app import build_app, serve

__all__ = ["build_app", "serve"]
