"""The plots of benchmarks/RESULTS.md, from figures measured and recorded in JSON.

- throughput per provider, precision and mode: the records of one or more
  ``fm2s-tile bench --json`` runs (``--bench``; several runs, e.g. CPU and GPU machines,
  are drawn side by side, each labelled with its machine);
- quality against training time per recipe (like Figure 1 of the FM2S paper): the
  ``recipes`` list of ``benchmarks/results.json`` (mean PSNR over the six FMD images and the
  training seconds per 512 x 512 image, each with the command that measured it).

    python benchmarks/plot_results.py --bench b.json --out benchmarks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def throughput(records: list[dict], path: Path) -> None:
    labels = [f"{r.get('gpu') or r['cpu']}\n{r['provider']} {r['precision']}\n{r['mode']}"
              for r in records]
    colors = {"session": "#4c72b0", "session-iobinding": "#8172b2", "pipeline": "#55a868",
              "torch": "#c44e52"}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(records)), 4.4), dpi=120)
    bars = ax.bar(range(len(records)), [r["mvox_s"] for r in records],
                  color=[colors.get(r["mode"], "grey") for r in records])
    ax.bar_label(bars, labels=[f"{r['mvox_s']:.3g}" for r in records], fontsize=8)
    ax.set_xticks(range(len(records)), labels, fontsize=7)
    ax.set_ylabel("Mvoxel/s (median of repeats)")
    ax.set_title("fm2s-tile throughput (default fast network, 2 views)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def quality_vs_time(recipes: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.6, 4.2), dpi=120)
    for r in recipes:
        marker = "o" if r.get("ours", True) else "s"
        ax.scatter(r["train_seconds"], r["psnr"], marker=marker, s=50)
        below = not r.get("ours", True)
        ax.annotate(r["label"], (r["train_seconds"], r["psnr"]), textcoords="offset points",
                    xytext=(6, -12 if below else 6), fontsize=8,
                    ha="right" if below else "left")
    ax.set_xscale("log")
    ticks = [10, 30, 100, 300, 1000]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(8, 3000)
    ax.margins(y=0.12)
    ax.set_xlabel("training seconds per 512 x 512 image (2 CPU cores)")
    ax.set_ylabel("mean PSNR over the six FMD images (dB)")
    ax.set_title("Quality against training time per recipe", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, nargs="*", default=[])
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    records = [r for path in args.bench for r in json.loads(path.read_text())]
    if records:
        throughput(records, args.out / "throughput.png")
        print(f"wrote {args.out / 'throughput.png'}")
    recipes = json.loads(args.results.read_text())["recipes"]
    quality_vs_time(recipes, args.out / "quality_vs_time.png")
    print(f"wrote {args.out / 'quality_vs_time.png'}")


if __name__ == "__main__":
    main()
