"""Palette's engine. Never imports gradio."""
