"""Encoders that map a photo to W+ in one pass (e4e) or a few (ReStyle), and their files.

    enc, G = import_encoder("e4e_ffhq_encode.pt", G)                # a release, checked against G
    enc = encoder_from_checkpoint("e4e_ffhq_encode.pt")           # a released checkpoint, unchecked
    save_encoder("e4e.safetensors", enc, G.fingerprint, source="e4e_ffhq_encode.pt")
    enc = load_encoder("e4e.safetensors")
    with torch.no_grad():
        ws = encode(enc, photo_input(img))                         # [1, 18, 512]
        ws = encode(restyle, x, render=G.synthesis)                 # ReStyle renders its guesses
"""
from .config import KINDS, W_DIM, EncoderConfig, default_config, n_styles_for
from .files import ENCODER_FORMAT, load_encoder, save_encoder
from .inference import Render, encode, fit_input, photo_input, pool_render
from .model import PhotoEncoder
from .networks import E4E, RestyleEncoder, build_network
from .official import ImportedEncoder, encoder_from_checkpoint, read_release
from .release import EncoderImport, check_encoder_generator, import_encoder, save_generator
from .state import check_encoder_state, expected_tensors

__all__ = [
    "KINDS", "W_DIM", "EncoderConfig", "default_config", "n_styles_for",
    "ENCODER_FORMAT", "load_encoder", "save_encoder",
    "Render", "encode", "fit_input", "photo_input", "pool_render",
    "PhotoEncoder", "E4E", "RestyleEncoder", "build_network",
    "ImportedEncoder", "encoder_from_checkpoint", "read_release",
    "EncoderImport", "check_encoder_generator", "import_encoder", "save_generator",
    "check_encoder_state", "expected_tensors",
]
