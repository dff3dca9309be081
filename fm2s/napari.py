"""The napari plugin: the "FM2S denoise" dock widget and a plain function for workflows.

napari loads this module through the npe2 manifest (``fm2s/napari.yaml``, entry point
``napari.manifest``) when the widget is opened; ``import fm2s`` never imports it, nor napari
or Qt. Install with ``pip install "fm2s-tile[napari]"``.

- :class:`DenoiseWidget` gathers the options (image layer, its axes, microscope preset,
  recipe, seed, training planes, an optional model file) and runs :func:`fm2s.api.denoise`
  in a worker thread (:func:`napari.qt.threading.create_worker`): the viewer stays
  responsive, a progress bar follows training and denoising, the button turns into
  "Cancel" while it runs. The result is added as ``"<name> (FM2S)"`` with the source
  layer's scale, translation, rotation, shear, affine, units and colormap. Library errors
  (:class:`~fm2s.errors.FM2SError`) are shown as one-line notifications.
- :func:`denoise_image` is :func:`fm2s.api.denoise` with napari's type annotations, for
  napari-assistant / napari-workflows style use (numpy in, numpy out, the input's shape
  and pixel type). It runs in the calling thread.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import FunctionWorker, create_worker
from napari.types import ImageData
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from . import api
from .errors import FM2SError
from .recipes import (
    DEFAULT_MICROSCOPE,
    DEFAULT_RECIPE,
    DEFAULT_TRAIN_PLANES,
    MICROSCOPES,
    RECIPES,
)

RUN_TEXT, CANCEL_TEXT = "Denoise", "Cancel"


class Cancelled(Exception):
    """Raised by the progress callback in the worker thread when cancel was requested."""


@dataclass(frozen=True)
class Outcome:
    """What a denoising job in the worker thread came to: an image, an error message, or
    cancelled (the worker returns it; an exception would be re-raised as a traceback)."""

    image: np.ndarray | None = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0


def run_job(image: Any, options: dict, cancelled: Callable[[], bool],
            report: Callable[[int, int], None]) -> Outcome:
    """Run :func:`fm2s.api.denoise` (in the worker thread) and say how it ended.

    Parameters
    ----------
    image
        The layer's data (numpy, dask or zarr array; read one plane at a time).
    options
        Keyword arguments of :func:`fm2s.api.denoise`.
    cancelled
        Polled at every progress report; when it returns True the work stops.
    report
        Called as ``report(done, total)`` with the progress (from this thread).

    Returns
    -------
    Outcome
        The denoised image, the one-line message of an :class:`~fm2s.errors.FM2SError`,
        or ``cancelled``. Other exceptions (bugs) propagate to the worker's ``errored``.
    """
    def progress(done: int, total: int) -> None:
        if cancelled():
            raise Cancelled
        report(done, total)

    start = time.perf_counter()
    try:
        out = api.denoise(image, progress=progress, **options)
    except Cancelled:
        return Outcome(cancelled=True)
    except FM2SError as exc:
        return Outcome(error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return Outcome(image=out, seconds=time.perf_counter() - start)


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued connection: the
    object lives in the main thread, the signal is emitted from the worker's)."""

    progressed = Signal(int, int)


class DenoiseWidget(Container):
    """The "FM2S denoise" dock widget.

    Parameters
    ----------
    viewer
        The napari viewer (napari passes it).

    Attributes
    ----------
    image, axes, microscope, recipe, seed, train_planes, model_file
        The option widgets (magicgui): image layer, its axes (for a stack), noise preset,
        recipe, seed, planes per channel to train on, and where to save the model (``.onnx``,
        or ``.zip`` for a bioimage.io package; empty: not saved; ``<stem>_c<k>`` per channel
        for several channels; an existing file is replaced).
    run_button, progress, status
        The Denoise/Cancel button, the progress bar and a one-line status.
    overrides
        Extra schedule fields of the recipe (:func:`fm2s.recipes.make_config`), empty by
        default; for experiments and tests (e.g. ``{"samples": 3}``).
    worker
        The running worker, or None.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.overrides: dict = {}
        self.worker: FunctionWorker | None = None
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.axes = ComboBox(label="axes", choices=self._axes_choices,
                             tooltip="axes of the layer, e.g. zyx, tyx, czyx: one model per "
                                     "channel (c), trained on a few of its planes")
        self.microscope = ComboBox(label="microscope", choices=MICROSCOPES,
                                   value=DEFAULT_MICROSCOPE,
                                   tooltip="noise model: auto measures it on the image")
        self.recipe = ComboBox(label="recipe", choices=RECIPES, value=DEFAULT_RECIPE)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.train_planes = SpinBox(label="training planes", min=1, max=4096,
                                    value=DEFAULT_TRAIN_PLANES,
                                    tooltip="planes per channel to train on (a stack)")
        self.model_file = FileEdit(label="save model", mode="w", filter="*.onnx *.zip",
                                   nullable=True, tooltip="optional: an .onnx file, or a .zip "
                                   "bioimage.io model package")
        self.run_button = PushButton(text=RUN_TEXT)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.extend([self.image, self.axes, self.microscope, self.recipe, self.seed,
                     self.train_planes, self.model_file, self.run_button, self.progress,
                     self.status])
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self.image.changed.connect(self._on_layer)
        self.run_button.changed.connect(self._on_button)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)
        self.native.destroyed.connect(self.cancel)
        self._refresh()
        active = viewer.layers.selection.active
        if isinstance(active, Image):
            self.image.value = active

    # -- choices ---------------------------------------------------------------------------

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _axes_choices(self, _widget: Any = None) -> list[str]:
        layer = self.image.value if hasattr(self, "image") else None
        if layer is None or layer.rgb or not 2 <= layer.ndim <= 5:
            return []
        return api.axes_for(layer.ndim)

    def _refresh(self, _event: Any = None) -> None:
        self.image.reset_choices()
        self._on_layer()

    def _watch_name(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh)

    def _on_layer(self, _value: Any = None) -> None:
        before = self.axes.value
        self.axes.reset_choices()
        choices = self.axes.choices
        if choices:
            self.axes.value = before if before in choices else choices[0]
        layer = self.image.value
        self.train_planes.enabled = layer is not None and layer.ndim > 2

    # -- running ---------------------------------------------------------------------------

    def options(self) -> dict:
        """The keyword arguments of :func:`fm2s.api.denoise` the widget's values give."""
        path = self.model_file.value
        return dict(axes=self.axes.value, recipe=self.recipe.value,
                    microscope=self.microscope.value, seed=int(self.seed.value),
                    train_planes=int(self.train_planes.value),
                    save_model=Path(path) if path not in (None, "", Path()) else None,
                    overwrite=True, **self.overrides)

    def _on_button(self, _value: Any = None) -> None:
        if self.worker is not None:
            self.cancel()
        else:
            self.run()

    def run(self) -> FunctionWorker | None:
        """Start denoising the chosen layer in a worker thread; returns the worker (None
        when nothing could start: no layer, an RGB layer; a notification says why)."""
        if self.worker is not None:
            return self.worker
        layer = self.image.value
        if layer is None:
            show_error("FM2S: add an image layer to denoise first")
            return None
        if layer.rgb:
            show_error(f"FM2S: layer '{layer.name}' is RGB: FM2S denoises single-channel "
                       "images (split the RGB layer into channels first)")
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        options = self.options()
        worker = create_worker(run_job, data, options, lambda: worker.abort_requested,
                               self._relay.progressed.emit, _start_thread=False)
        worker.returned.connect(lambda outcome: self._on_returned(layer, options, outcome))
        worker.errored.connect(lambda _exc: setattr(self.status, "value", "failed"))
        worker.finished.connect(lambda: self._on_finished(worker))
        self.worker = worker
        self.run_button.text = CANCEL_TEXT
        self.progress.max, self.progress.value = 1, 0
        self.status.value = f"denoising '{layer.name}'"
        worker.start()
        return worker

    def cancel(self, *_args: Any) -> None:
        """Ask the running work to stop (it stops at its next progress report)."""
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, done: int, total: int) -> None:
        if self.worker is None:
            return
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)

    def _on_returned(self, layer: Image, options: dict, outcome: Outcome) -> None:
        if outcome.error is not None:
            show_error(f"FM2S: {outcome.error}")
            self.status.value = "failed"
            return
        if outcome.cancelled or outcome.image is None:
            return  # said by _on_finished
        self._viewer.add_image(
            outcome.image, name=f"{layer.name} (FM2S)", scale=layer.scale,
            translate=layer.translate, rotate=layer.rotate, shear=layer.shear,
            affine=layer.affine, units=layer.units, axis_labels=layer.axis_labels,
            colormap=layer.colormap, blending=layer.blending,
            metadata={"fm2s": {"source": layer.name, **_plain(options)}})
        self.status.value = f"done in {outcome.seconds:.1f} s"

    def _on_finished(self, worker: FunctionWorker) -> None:
        if worker is not self.worker:
            return
        if worker.abort_requested:
            show_info("FM2S: cancelled, nothing was added")
            self.status.value = "cancelled"
        self.worker = None
        self.run_button.text = RUN_TEXT


def _plain(options: dict) -> dict:
    """Options as JSON-friendly values (layer metadata)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
            if k != "overwrite"}


def denoise_image(image: ImageData, axes: str = "",
                  microscope: Annotated[str, {"choices": MICROSCOPES}] = DEFAULT_MICROSCOPE,
                  recipe: Annotated[str, {"choices": RECIPES}] = DEFAULT_RECIPE,
                  seed: int = 0) -> ImageData:
    """Denoise an image or a stack with FM2S: :func:`fm2s.api.denoise` for napari.

    Parameters
    ----------
    image
        A 2D image or a stack (2 to 5 dimensions ending in Y, X), raw pixel values.
    axes
        Its axes (``zyx``, ``tyx``, ``czyx``, ...); empty: ``yx``, ``zyx``, ``czyx`` or
        ``tczyx`` by its dimensions.
    microscope, recipe, seed
        Noise preset, recipe and seed (see :func:`fm2s.api.train`).

    Returns
    -------
    numpy.ndarray
        The denoised image, the input's shape and pixel type.
    """
    return api.denoise(image, recipe, microscope, seed, axes=axes or None)
