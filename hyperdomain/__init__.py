"""hyperdomain: parameter-efficient domain adaptation of a frozen StyleGAN2 (HyperDomainNet).

Public API::

    import hyperdomain as hd
    G = hd.load_generator("ffhq")                      # manifest name or checkpoint path
    pixar = hd.Domain.load("pixar.safetensors", generator=G)
    images = G.sample(8, domain=pixar, truncation=0.7, seed=0)
    hd.save_grid(images, "pixar.png")
"""
from ._version import __version__
from .animation import animate
from .clip import ClipEncoder, ClipSpec, load_clip
from .config import GeneratorConfig
from . import data, datasets
from .datasets import make_dataset, verify_dataset
from .domain import Domain, mix
from .errors import HyperdomainError, StorageError
from .evaluation import evaluate
from .files.paper_files import import_checkpoint, import_hypernet
from .files.pretrained import download, load_manifest, weights_home
from .generator import Generator, load_generator
from .hypernet import HyperConfig, HyperDomainNet
from .images import make_grid, save_grid, save_images
from .inversion import InversionConfig, invert
from .latent import Latent
from .losses import LossWeights
from .stylize import Stylized, stylize
from .training.adapt import AdaptConfig, adapt, read_adapt_config
from .training.hyper import HyperTrainConfig, read_hyper_config, train_hyper
from .training.image import ImageAdaptConfig, adapt_image
from .webapp import serve

__all__ = [
    "AdaptConfig",
    "ImageAdaptConfig",
    "InversionConfig",
    "Latent",
    "adapt_image",
    "invert",
    "stylize",
    "Stylized",
    "ClipEncoder",
    "ClipSpec",
    "LossWeights",
    "HyperConfig",
    "HyperDomainNet",
    "HyperTrainConfig",
    "adapt",
    "animate",
    "evaluate",
    "import_hypernet",
    "read_hyper_config",
    "train_hyper",
    "load_clip",
    "read_adapt_config",
    "Domain",
    "Generator",
    "GeneratorConfig",
    "HyperdomainError",
    "StorageError",
    "download",
    "import_checkpoint",
    "load_generator",
    "load_manifest",
    "make_dataset",
    "make_grid",
    "mix",
    "save_grid",
    "save_images",
    "serve",
    "verify_dataset",
    "weights_home",
]
