"""hyperdomain: parameter-efficient domain adaptation of a frozen StyleGAN2 (HyperDomainNet).

Public API::

    import hyperdomain as hd
    G = hd.load_generator("ffhq")                      # manifest name or checkpoint path
    pixar = hd.Domain.load("pixar.safetensors", generator=G)
    images = G.sample(8, domain=pixar, truncation=0.7, seed=0)
    hd.save_grid(images, "pixar.png")
"""
from ._version import __version__
from .media.animation import animate
from .guidance.clip import ClipEncoder, ClipSpec, load_clip
from .model.config import GeneratorConfig
from . import datasets
from .datasets import make_dataset, verify_dataset
from .model.domain import Domain, mix
from .errors import HyperdomainError, StorageError
from .guidance.evaluation import evaluate
from .model.paper_checkpoints import import_checkpoint, import_hypernet
from .files.pretrained import download, load_manifest, weights_home
from .model.generator import Generator, load_generator
from .model.hypernet import HyperConfig, HyperDomainNet
from .media.grids import make_grid, save_grid, save_images
from .image.inversion import InversionConfig, invert
from .image.encoders import PhotoEncoder, import_encoder, load_encoder
from .image.encoders.choice import encoder_for
from .model.latent import Latent
from .guidance.losses import LossWeights
from .image.stylize import Stylized, stylize
from .image.translate import translate
from .image.translators.files import Translator, load_translator
from .training.adapt import AdaptConfig, adapt, read_adapt_config
from .training.encoder import EncoderTrainConfig, read_encoder_train_config, train_encoder
from .training.hyper import HyperTrainConfig, read_hyper_config, train_hyper
from .training.one_shot import ImageAdaptConfig, adapt_image
from .training.translator import TranslatorTrainConfig, train_translator
from .webapp import serve

data = datasets  # ``hd.data.DomainViews``: training pairs made on the fly live with the datasets

__all__ = [
    "AdaptConfig",
    "EncoderTrainConfig",
    "read_encoder_train_config",
    "train_encoder",
    "ImageAdaptConfig",
    "InversionConfig",
    "Latent",
    "adapt_image",
    "invert",
    "PhotoEncoder",
    "encoder_for",
    "import_encoder",
    "load_encoder",
    "stylize",
    "Stylized",
    "Translator",
    "TranslatorTrainConfig",
    "load_translator",
    "train_translator",
    "translate",
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
