"""fm2s-tile: zero-shot FM2S denoising of fluorescence microscopy images."""

__version__ = "0.1.0"

from .api import TrainedModel, apply, denoise, train  # noqa: E402
from .recipes import make_config  # noqa: E402
from .runtime import OnnxDenoiser  # noqa: E402

__all__ = ["__version__", "denoise", "train", "apply", "TrainedModel", "OnnxDenoiser",
           "make_config"]
