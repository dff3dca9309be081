"""fm2s-tile: zero-shot FM2S denoising of fluorescence microscopy images.

Arrays: :func:`train`, :func:`apply`, :func:`denoise`, :class:`OnnxDenoiser`.
Files and volumes: :func:`open_image`, :func:`denoise_array`, :func:`train_and_apply`,
:func:`apply_model`, :func:`info`. Training needs torch (imported when used); everything
else runs on numpy, dask, zarr and onnxruntime.
"""

from ._version import __version__
from .api import apply, denoise, train  # noqa: E402
from .errors import FM2SError, ParameterError  # noqa: E402
from .jobs import InfoReport, RunReport, info, train_and_apply  # noqa: E402
from .jobs import apply as apply_model  # noqa: E402
from .readers import Image, open_image  # noqa: E402
from .recipes import make_config  # noqa: E402
from .runtime import OnnxDenoiser  # noqa: E402
from .tiling import denoise_array  # noqa: E402


def __getattr__(name: str):
    if name == "TrainedModel":  # the training side: imports torch
        from .model import TrainedModel

        return TrainedModel
    raise AttributeError(f"module 'fm2s' has no attribute {name!r}")


__all__ = ["__version__", "train", "apply", "denoise", "TrainedModel", "OnnxDenoiser",
           "make_config", "open_image", "Image", "denoise_array", "train_and_apply",
           "apply_model", "info", "RunReport", "InfoReport", "FM2SError", "ParameterError"]
