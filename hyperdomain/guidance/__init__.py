"""Guidance: what tells a domain where to go, and how well it got there.

| module | holds |
|---|---|
| ``clip`` | CLIP encoders (open_clip), their specs, preprocessing and text embeddings |
| ``losses`` | the loss registry: every loss by name, with its default weight and help (CLIP and image losses) |
| ``domain_lists`` | prompt lists for the hypernetwork (the shipped ``domains_*.txt`` and users' files) |
| ``evaluation`` | the paper's quality and diversity scores (``hyperdomain evaluate``) |
"""
