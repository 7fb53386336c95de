"""Media: what the toolkit shows people.

| module | holds |
|---|---|
| ``grids`` | image grids and single images as PNG files (the only place outputs are clamped to pixels) |
| ``animation`` | GIF, WebP and MP4 animations of domains (strength, morph, walk) |
"""
