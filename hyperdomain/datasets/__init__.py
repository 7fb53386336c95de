"""Datasets made by a generator and its domains: sharded exports and on-the-fly training pairs.

Every image is a pure function of ``(seed, index)`` and the settings, so shards are independent
units of work for any number of processes or nodes.
"""
from .latents import index_latent, stream_seed, view_latent
from .make import dataset_settings, make_dataset, sample_record
from .render import render_latents, render_samples
from .settings import DatasetSettings, read_settings
from .verify import verify_dataset
from .views import DomainViews, PairPlan

__all__ = ["DatasetSettings", "DomainViews", "PairPlan", "dataset_settings", "index_latent", "make_dataset", "read_settings",
           "render_latents", "render_samples", "sample_record", "stream_seed", "verify_dataset", "view_latent"]
