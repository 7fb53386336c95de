"""The local web app (``hyperdomain serve``): Explore, Adapt and Photo panels over the public API.

Everything here but :mod:`.ui` and :mod:`.server` is plain Python with no Gradio in it (the
models the app holds, the settings it accepts, the background training run), so it is tested
directly; Gradio (``pip install 'hyperdomain[ui]'``) is imported only when a server starts.
"""
from .models import AppModels, load_models
from .server import serve

__all__ = ["AppModels", "load_models", "serve"]
