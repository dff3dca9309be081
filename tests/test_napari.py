"""The napari plugin with a real napari viewer: discovery, the widget on a 2D layer and a
stack, responsiveness (the work runs in a worker thread), cancelling, errors.

napari's OpenGL canvas needs an X display (Qt's offscreen platform cannot make it): the
tests use ``$DISPLAY`` when Qt can open it (pytest-xvfb or xvfb-run set it), else start
Xvfb themselves; they skip, saying why, without napari, pytest-qt or a display.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="the napari plugin needs fm2s-tile[napari]")
pytest.importorskip("pytestqt", reason="the napari tests need pytest-qt")

import fm2s  # noqa: E402
from fm2s.sample import synthetic_image, synthetic_stack  # noqa: E402

TINY = dict(samples=2, warmup_steps=1)  # training in a fraction of a second
WAIT_MS = 60_000


def _qt_fails(env: dict[str, str]) -> str | None:
    """None when a QApplication starts under ``env`` (in a subprocess: Qt aborts the
    process when it cannot open its platform), else the last line Qt printed."""
    code = "from qtpy.QtWidgets import QApplication; QApplication([])"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    if res.returncode == 0:
        return None
    return (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]


def _end_with_parent() -> None:
    """In the child: receive SIGTERM when the parent (this test process) ends."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session", autouse=True)
def x_display():
    """An X display for the session's QApplication (set up before pytest-qt's ``qapp``):
    ``$DISPLAY`` if Qt opens it, else an Xvfb started here."""
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    server = None
    if sys.platform.startswith("linux"):
        if os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"):
            os.environ.pop("QT_QPA_PLATFORM")  # napari's canvas needs a real display
        if not os.environ.get("DISPLAY") or _qt_fails(dict(os.environ)):
            if shutil.which("Xvfb") is None:
                pytest.skip("napari's viewer needs an X display: install Xvfb (apt-get install "
                            "xvfb) or run under xvfb-run / pytest-xvfb")
            read, write = os.pipe()
            # not stopped at the end of the session: Qt, still connected then, would take
            # the server's end for a crash; it ends with this process (PR_SET_PDEATHSIG)
            server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0",
                                       "1280x1024x24", "-nolisten", "tcp"], pass_fds=(write,),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      preexec_fn=_end_with_parent)
            os.close(write)
            with os.fdopen(read) as pipe:  # Xvfb writes its display number when ready
                number = pipe.readline().strip()
            if not number:
                server.kill()
                pytest.skip("Xvfb did not start")
            os.environ["DISPLAY"] = f":{number}"
            why = _qt_fails(dict(os.environ))
            if why:
                server.kill()
                pytest.skip(f"Qt cannot open Xvfb's display (the xcb libraries? see README): "
                            f"{why}")
    yield os.environ.get("DISPLAY")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Training with one torch thread: on a shared two-core machine two threads that
    compete with other processes make a step up to 25 times slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer):
    """The widget as napari opens it: from the plugin's manifest, docked."""
    _, widget = viewer.window.add_plugin_dock_widget("fm2s-tile", "FM2S denoise")
    widget.overrides = dict(TINY)
    yield widget
    if widget.worker is not None:  # a failed test: stop the work before the viewer closes
        widget.cancel()
        _wait(widget)


def _wait(widget, timeout: int = WAIT_MS) -> None:
    from qtpy.QtCore import QCoreApplication

    end = time.monotonic() + timeout / 1000
    while widget.worker is not None and time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.005)
    assert widget.worker is None, "the worker did not finish"


def _image(shape=(64, 64), seed=0) -> np.ndarray:
    return synthetic_image(shape, np.random.default_rng(seed))[0]


def _roughness(image: np.ndarray) -> float:
    return float(np.mean(np.abs(np.diff(np.asarray(image, np.float64), axis=-1))))


def _errors() -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records
            if n.severity == NotificationSeverity.ERROR]


# --------------------------------------------------------------------------------------


def test_importing_fm2s_imports_neither_napari_nor_qt():
    code = ("import sys, fm2s, fm2s.api, fm2s.cli; "
            "bad = {m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt6', "
            "'PyQt5', 'PySide6', 'magicgui', 'superqt', 'vispy', 'npe2'}; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(fm2s.__file__).parents[1], timeout=120)
    assert res.returncode == 0, res.stderr


def test_napari_discovers_the_plugin_and_its_manifest_is_valid():
    from npe2 import PluginManager, PluginManifest

    path = Path(fm2s.__file__).parent / "napari.yaml"
    manifest = PluginManifest.from_file(path)
    manifest.validate_imports()  # every python_name imports
    pm = PluginManager.instance()
    pm.discover()
    assert "fm2s-tile" in pm, "reinstall fm2s-tile (pip install -e .): no napari.manifest " \
                              "entry point"
    widgets = [w.display_name for w in pm.get_manifest("fm2s-tile").contributions.widgets]
    assert widgets == ["FM2S denoise", "FM2S denoise (function)"]


def test_a_2d_layer_is_denoised_into_a_layer_with_its_scale(viewer, widget):
    noisy = _image()
    viewer.add_image(np.zeros((16, 16), np.uint8), name="other")
    layer = viewer.add_image(noisy, name="cells", scale=(0.5, 0.25), translate=(10, 20),
                             colormap="green")
    widget.image.value = layer
    assert widget.axes.choices == ("yx",) and not widget.train_planes.enabled
    widget.seed.value = 3
    worker = widget.run()
    assert worker is not None and widget.run_button.text == "Cancel"
    _wait(widget)
    assert widget.run_button.text == "Denoise"
    assert [x.name for x in viewer.layers] == ["other", "cells", "cells (FM2S)"]
    out = viewer.layers["cells (FM2S)"]
    np.testing.assert_array_equal(out.scale, layer.scale)
    np.testing.assert_array_equal(out.translate, layer.translate)
    assert out.colormap.name == "green"
    assert out.data.dtype == noisy.dtype and out.data.shape == noisy.shape
    # the library's result (same options), and denoised
    np.testing.assert_array_equal(out.data, fm2s.denoise(noisy, seed=3, **TINY))
    assert _roughness(out.data) < 0.5 * _roughness(noisy)
    assert widget.progress.value == widget.progress.max > 1
    assert out.metadata["fm2s"]["seed"] == 3


def test_a_3d_stack_is_denoised_plane_by_plane_and_the_model_saved(viewer, widget, tmp_path):
    stack = synthetic_stack((1, 1, 3, 48, 48), np.random.default_rng(2))[0][0, 0]
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    widget.image.value = layer
    assert widget.axes.choices == ("zyx", "tyx", "cyx") and widget.axes.value == "zyx"
    assert widget.train_planes.enabled
    widget.model_file.value = tmp_path / "stack.onnx"
    widget.run()
    _wait(widget)
    out = viewer.layers["stack (FM2S)"]
    np.testing.assert_array_equal(out.scale, (2.0, 0.5, 0.5))
    assert out.data.shape == stack.shape and out.data.dtype == stack.dtype
    for z in range(3):  # every plane denoised
        assert _roughness(out.data[z]) < 0.5 * _roughness(stack[z])
    np.testing.assert_array_equal(out.data, fm2s.denoise(stack, axes="zyx", **TINY))
    # the saved model gives the same planes
    np.testing.assert_array_equal(fm2s.apply(tmp_path / "stack.onnx", stack, provider="cpu"),
                                  out.data)


def test_the_viewer_stays_responsive_while_the_worker_trains(viewer, widget, monkeypatch):
    """The work runs in a thread other than the main one; the main thread's event loop
    runs meanwhile (a timer fires, the progress bar moves)."""
    from qtpy.QtCore import QTimer

    real, threads = fm2s.api.denoise, []

    def slow_denoise(image, progress, **options):  # the real work, at least ~0.5 s long
        threads.append(threading.get_ident())

        def report(done, total):
            time.sleep(0.01)
            progress(done, total)

        return real(image, progress=report, **options)

    monkeypatch.setattr(fm2s.api, "denoise", slow_denoise)
    layer = viewer.add_image(_image(seed=1), name="cells")
    widget.image.value = layer
    widget.overrides = dict(samples=6, warmup_steps=1)  # 55 steps, one report each
    ticks, bar = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: (ticks.append(time.monotonic()),
                                   bar.append(widget.progress.value)))
    timer.start(20)
    start = time.monotonic()
    widget.run()
    returned = time.monotonic() - start
    assert widget.worker is not None  # run() returned while the work goes on
    _wait(widget)
    timer.stop()
    assert threads and threads[0] != threading.main_thread().ident
    assert returned < 1.0
    assert len(ticks) >= 10, ticks  # the event loop ran throughout
    moving = {v for v in bar if 0 < v < widget.progress.max}
    assert len(moving) >= 3, bar  # the bar moved while it ran
    assert "cells (FM2S)" in viewer.layers


def test_cancel_stops_the_work_and_adds_nothing(viewer, widget, tmp_path):
    layer = viewer.add_image(_image(seed=2), name="cells")
    widget.image.value = layer
    widget.overrides = dict(samples=1000)  # 9001 steps: about a minute of training
    widget.model_file.value = tmp_path / "m.onnx"
    widget.run()
    seen = []
    widget._relay.progressed.connect(lambda done, total: seen.append((done, total)))
    from qtpy.QtCore import QCoreApplication

    end = time.monotonic() + 30
    while not seen and time.monotonic() < end:  # training has started
        QCoreApplication.processEvents()
        time.sleep(0.005)
    assert seen and widget.run_button.text == "Cancel"
    start = time.monotonic()
    widget.run_button.native.click()  # the button cancels while it runs
    _wait(widget, 15_000)
    assert time.monotonic() - start < 15
    assert seen[-1][0] < seen[-1][1]  # stopped early
    assert [x.name for x in viewer.layers] == ["cells"]
    assert widget.status.value == "cancelled" and widget.run_button.text == "Denoise"
    assert list(tmp_path.iterdir()) == []  # no model saved
    # cleaned up: the next run works
    widget.overrides = dict(TINY)
    widget.run()
    _wait(widget)
    assert [x.name for x in viewer.layers] == ["cells", "cells (FM2S)"]


def test_library_errors_are_one_line_notifications(viewer, widget, tmp_path):
    layer = viewer.add_image(_image(seed=3), name="cells")
    widget.image.value = layer
    widget.model_file.value = tmp_path / "m.txt"
    before = len(_errors())
    widget.run()
    _wait(widget)
    errors = _errors()[before:]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("FM2S: save_model=") and ".onnx" in errors[0]
    assert [x.name for x in viewer.layers] == ["cells"] and widget.status.value == "failed"
    rgb = viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="rgb", rgb=True)
    widget.image.value = rgb
    assert widget.run() is None and "RGB" in _errors()[-1]


def test_the_function_for_workflows(viewer, monkeypatch):
    """denoise_image is fm2s.api.denoise with napari's types: same arguments, numpy out;
    napari makes its widget from the manifest."""
    from fm2s.napari import denoise_image

    calls = []
    monkeypatch.setattr(fm2s.api, "denoise",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or args[0] + 1)
    image = np.zeros((3, 20, 20), np.uint16)
    out = denoise_image(image, "tyx", "widefield", "v2", 4)
    assert calls == [((image, "v2", "widefield", 4), {"axes": "tyx"})]
    assert out.dtype == np.uint16 and out.shape == image.shape
    denoise_image(image)
    assert calls[-1] == ((image, "fast", "auto", 0), {"axes": None})
    _, function_widget = viewer.window.add_plugin_dock_widget("fm2s-tile",
                                                              "FM2S denoise (function)")
    names = [w.name for w in function_widget]
    assert names[:5] == ["image", "axes", "microscope", "recipe", "seed"]
