"""The ``fm2s-tile`` command line: each command parses options and calls the library."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from .errors import FM2SError
from .recipes import DEFAULT_MICROSCOPE, DEFAULT_RECIPE, MICROSCOPES, RECIPES

# typer's usage-error classes, whether typer runs on click or on its own copy of it
_UsageError, _CLIError = typer.BadParameter.__mro__[1:3]


def _one_line(text: str) -> str:
    return " ".join(text.replace("Value error, ", "").split())


class _OneLineErrors(TyperGroup):
    """Report bad input as one line on stderr, without a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _UsageError as exc:
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {_one_line(exc.format_message())}{where}", err=True)
            code = exc.exit_code
        except (FM2SError, _CLIError) as exc:
            message = exc.format_message() if isinstance(exc, _CLIError) else str(exc)
            typer.echo(f"error: {_one_line(message)}", err=True)
            code = 1
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("interrupted: no output was written", err=True)
            code = 130
        except OSError as exc:
            typer.echo(f"error: {exc.strerror or exc} ({exc.filename or 'file'})", err=True)
            code = 1
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Zero-shot FM2S denoising of fluorescence microscopy images.",
)


Recipe = StrEnum("Recipe", {name: name for name in RECIPES})
Microscope = StrEnum("Microscope", {name: name for name in MICROSCOPES})
Device = StrEnum("Device", {name: name for name in ("auto", "cpu", "cuda")})


InPath = Annotated[Path, typer.Argument(help="Input image: single-channel PNG or TIFF.",
                                        show_default=False)]
OutPath = Annotated[Path | None, typer.Option(
    "-o", "--output", help="Output image (same format). Default: the input's name with '.fm2s' "
    "before the extension.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]


@app.command("train-and-apply")
def train_and_apply_cmd(
    image: InPath,
    output: OutPath = None,
    recipe: Annotated[Recipe, typer.Option(
        help="fast: this project's default (random crops, minutes -> seconds); paper: the FM2S "
        "paper; v2: the authors' later code.")] = Recipe[DEFAULT_RECIPE],
    microscope: Annotated[Microscope, typer.Option(
        help="Noise preset. Defaults to confocal until automatic choice exists; the paper "
        "recipe uses one preset for all.")] = Microscope[DEFAULT_MICROSCOPE],
    device: Annotated[Device, typer.Option(help="Training device.")] = Device["auto"],
    seed: Annotated[int, typer.Option(min=0, help="Seed: same seed, machine and device give "
                                      "the same result.")] = 0,
    save_model: Annotated[Path | None, typer.Option(
        help="Also save the trained model as ONNX here.", show_default=False)] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Train FM2S on the input image itself and write it denoised."""
    from .pipeline import train_and_apply_file

    summary = train_and_apply_file(image, output, recipe=recipe.value,
                                   microscope=microscope.value, device=device.value, seed=seed,
                                   save_model=save_model, overwrite=overwrite, quiet=quiet)
    typer.echo(summary)


@app.command("apply")
def apply_cmd(
    model: Annotated[Path, typer.Argument(help="Model saved with --save-model (.onnx).",
                                          show_default=False)],
    image: InPath,
    output: OutPath = None,
    provider: Annotated[Device, typer.Option(help="onnxruntime execution provider.")] = Device[
        "auto"],
    overwrite: Overwrite = False,
) -> None:
    """Denoise an image with a saved model (no training)."""
    from .pipeline import apply_file

    typer.echo(apply_file(model, image, output, provider=provider.value, overwrite=overwrite))


@app.command("demo")
def demo_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder for the sample images.")] = Path(
        "fm2s-demo"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sample and the training.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Make a synthetic noisy sample with its ground truth, denoise it, report the PSNR gain."""
    from .pipeline import demo

    typer.echo(demo(folder, seed=seed, quiet=quiet))


if __name__ == "__main__":  # pragma: no cover
    app()
