"""The paper's Figure 1 for rbn's layers: gradient flow through time at initialization, and
tanh's expected derivative.

Left panel: ‖∂loss/∂h_t‖ against t (log scale) on seqMNIST training batches, for BN-LSTM with
every gain initialised to each γ of --gammas, and LSTM and LN-LSTM as references. The models
are the seqmnist preset's (``experiment=seqmnist model=...``: 100 units, the identity in W_h's
g block, forget-gate bias 1) at initialization, classifying from the last step's h with
cross-entropy. The norm is ``rbn.analysis.hidden_state_gradient_norms``: the mean over the
batch of each image's norm, as the authors' plotting script computes it. Right panel:
E[tanh'(x)] and the quartiles of tanh'(x) for x ~ N(0, σ²): the larger σ, the more tanh saturates.

    python scripts/gradient_flow.py                            # T 196 (2 x 2 pooled images): half a minute on a CPU
    python scripts/gradient_flow.py --pool 1                   # the paper's T 784: 1 min 40 s on one CPU core
    python scripts/gradient_flow.py --pool 1 --device cuda     # the same on a GPU
    python scripts/gradient_flow.py --gammas 0.1,1 --seeds 1 --batches 1 --png flow.png --csv flow.csv

Writes the PNG and a CSV (a row per model, γ and step t: the mean norm over seeds and batches),
and prints ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ per curve.

- Length: ``--pool K`` averages K x K squares of each image, T = (28 / K)², so that the whole
  digit stays in the sequence; ``--pool 1`` is the paper's 784 pixels.
- Batches: the preset's size (100) unless ``--batch-size``; norms scale as 1 / batch size.
- Training mode, as in training: batch statistics, and the preset's h0 noise (0.1 for BN-LSTM
  and LN-LSTM). Without the noise, the black first rows leave the first steps with zero batch
  variance and their ∂L/∂h_t is NaN (measured at T 196 for every γ here and for LN-LSTM): the
  figure would show the division by √eps, not γ. Each model is built for one seed and thrown
  away, so the running statistics its forwards update are never read or saved.
- Seed s builds every model from ``torch.manual_seed(s)``: BN-LSTMs of different γ share their
  weights and h0 noise. Every model reads the same batches.
- The paper's Figure 1(a) is drawn for a batch-normalized tanh RNN, not BN-LSTM.
- MNIST comes from the data config's source and root (``$RBN_DATA``); see ``python -m data.fetch``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path
from statistics import NormalDist

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hydra import compose, initialize_config_dir  # noqa: E402

from data import DataError  # noqa: E402
from rbn.analysis import hidden_state_gradient_norms  # noqa: E402
from rbn.trainer import build_dataset, build_model  # noqa: E402
from scripts import arguments  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
GAMMAS = [round(0.1 * k, 1) for k in range(1, 11)]
REFERENCES = {"lstm": ("LSTM", "--"), "lnlstm": ("LN-LSTM", ":")}  # label, line style
# The g gate's pre-activation is the sum of two normalized terms: std γ√2, 1.41 at γ = 1.
SIGMAS = np.linspace(0, 1.5, 151)


def gammas(spec: str) -> list[float]:
    try:
        values = [float(value) for value in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {spec!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"every gain must be positive, got {spec!r}")
    return values


def model_config(name: str, steps: int, hidden_size: int | None = None, gamma: float | None = None):
    """The seqmnist preset with one model, its per-model settings included."""
    overrides = ["experiment=seqmnist", f"model={name}"]
    if hidden_size is not None:
        overrides.append(f"model.hidden_size={hidden_size}")
    if name == "bnlstm":
        overrides += [f"model.max_length={steps}", f"model.gamma_init={gamma}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def pooled(images: Tensor, pool: int) -> Tensor:
    """(B, 784, 1) pixels -> (B, (28 / pool)², 1): each pool x pool square averaged, in scan-line order."""
    side = int(images.shape[1] ** 0.5)
    return F.avg_pool2d(images.view(-1, 1, side, side), pool).flatten(1).unsqueeze(-1)


def averaged_norms(cfg, dataset, batches: list[tuple[Tensor, Tensor]], seeds: int, device: torch.device) -> Tensor:
    """hidden_state_gradient_norms averaged over seeds x batches, one fresh model per seed in
    training mode."""
    curves = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model(cfg, dataset).to(device).train()
        curves += [hidden_state_gradient_norms(model, inputs, targets) for inputs, targets in batches]
    return torch.stack(curves).mean(0).cpu()


def tanh_derivative_statistics(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E[tanh'(x)] and the 25th and 75th percentiles of tanh'(x), for x ~ N(0, σ²) at each σ.

    The mean by Gauss-Hermite quadrature; the percentiles exactly, since tanh' decreases in |x|,
    whose quantiles are σ times those of |N(0, 1)|."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(101)
    mean = (1 - np.tanh(np.outer(sigmas, nodes)) ** 2) @ weights / np.sqrt(2 * np.pi)
    # The p-th quantile of |N(0, 1)| is the (1 + p) / 2-th of N(0, 1).
    lower = 1 - np.tanh(sigmas * NormalDist().inv_cdf(0.875)) ** 2
    upper = 1 - np.tanh(sigmas * NormalDist().inv_cdf(0.625)) ** 2
    return mean, lower, upper


def plot(curves: dict[tuple[str, float | None], Tensor], title: str, path: Path) -> None:
    figure, (flow, tanh) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colors = iter(plt.cm.viridis(np.linspace(0.05, 0.95, sum(name == "bnlstm" for name, _ in curves))))
    for (name, gamma), norms in curves.items():
        t = range(1, len(norms) + 1)
        if name == "bnlstm":
            flow.plot(t, norms, color=next(colors), label=f"BN-LSTM γ={gamma:g}")
        else:
            label, style = REFERENCES[name]
            flow.plot(t, norms, color="black", linestyle=style, label=label)
    flow.set(yscale="log", xlabel="t", ylabel="‖∂loss/∂h_t‖ (mean over images)", title="gradient flow")
    flow.grid(alpha=0.3)
    flow.legend(fontsize=7, ncol=2)
    mean, lower, upper = tanh_derivative_statistics(SIGMAS)
    tanh.fill_between(SIGMAS, lower, upper, alpha=0.3, linewidth=0, label="25th to 75th percentile")
    tanh.plot(SIGMAS, mean, label="E[tanh'(x)]")
    tanh.set(xlabel="σ, the standard deviation of x ~ N(0, σ²)", ylabel="tanh'(x)", ylim=(0, 1.02),
             title="tanh saturates as σ grows")
    tanh.grid(alpha=0.3)
    tanh.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gammas", type=gammas, default=GAMMAS, help="BN-LSTM's initial gains, comma-separated")
    parser.add_argument("--pool", type=int, choices=(1, 2, 4, 7), default=2, help="K x K pooling: T = (28 / K)²")
    parser.add_argument("--seeds", type=arguments.positive, default=2, help="models per curve, seeds 0, 1, ...")
    parser.add_argument("--batches", type=arguments.positive, default=2, help="training batches per model")
    parser.add_argument("--batch-size", type=arguments.positive, help="default: the preset's (100)")
    parser.add_argument("--hidden-size", type=arguments.positive, help="default: the preset's (100)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument("--png", type=arguments.figure_file, default="gradient_flow.png", help="or .pdf, .svg, ...")
    parser.add_argument("--csv", type=arguments.output_file, default="gradient_flow.csv")
    args = parser.parse_args()
    if args.png.resolve() == args.csv.resolve():
        parser.error(f"--png and --csv are the same file, {args.csv}: the figure would replace the numbers")
    device = arguments.device(parser, args.device)

    steps = (28 // args.pool) ** 2
    preset = model_config("lstm", steps)
    hidden_size = args.hidden_size or preset.model.hidden_size
    batch_size = args.batch_size or preset.trainer.batch_size
    if batch_size < 2:
        parser.error("--batch-size must be at least 2: BN-LSTM normalizes with batch statistics")
    try:
        dataset = build_dataset(preset)
    except DataError as error:
        parser.error(f"MNIST is not available: {error}")
    if len(dataset) < args.batches * batch_size:
        parser.error(f"the training set has fewer than {args.batches} batches of {batch_size}")
    shuffled = dataset.batches("train", batch_size, generator=torch.Generator().manual_seed(0))
    batches = [(pooled(x, args.pool).to(device), y.to(device)) for x, y in itertools.islice(shuffled, args.batches)]

    curves = {}
    for name, gamma in [*(("bnlstm", gamma) for gamma in args.gammas), *((name, None) for name in REFERENCES)]:
        cfg = model_config(name, steps, hidden_size, gamma)
        started = time.perf_counter()
        norms = curves[name, cfg.model.get("gamma_init")] = averaged_norms(cfg, dataset, batches, args.seeds, device)
        label = f"{name} γ={gamma:g}" if gamma is not None else name
        print(f"{label:15} ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ = {(norms[0] / norms[-1]).item():.3g}  "
              f"({time.perf_counter() - started:.1f} s)", flush=True)

    with args.csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "gamma", "t", "norm"])
        for (name, gamma), norms in curves.items():
            writer.writerows([name, "" if gamma is None else gamma, t, norm] for t, norm in enumerate(norms.tolist(), 1))
    title = (f"seqMNIST at initialization: T {steps}, {hidden_size} units, batches of {batch_size}, "
             f"{args.seeds} seed(s) x {args.batches} batch(es)")
    plot(curves, title, args.png)
    print(f"wrote {args.png} and {args.csv}")


if __name__ == "__main__":
    main()
