"""The Gradio web app (`arnodes ui`): layout in app.py, handlers in callbacks.py."""
