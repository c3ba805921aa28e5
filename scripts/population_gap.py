"""Which of a BN-LSTM's normalizations lose accuracy with population statistics:
``python scripts/population_gap.py RUN_DIR [--batches N] [--batch-size B] [--estimate-batches M]``.

Loads RUN_DIR/best.pt (its config comes with it), re-estimates the population statistics as
the trainer's final evaluation does (``update_bn`` over the first M training batches of
epoch 0), then evaluates the first N validation batches with every combination of batch and
population statistics for the three normalizations of the paper's equations: BN(W_x x),
BN(W_h h) and BN(c), each the same in every layer and direction. Validation batches are the
run's size unless ``--batch-size`` says otherwise: batch statistics over more images (the
population rows do not depend on it). For classification runs (sequential and permuted MNIST).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import DataError  # noqa: E402
from rbn.norm import SequenceBatchNorm  # noqa: E402
from rbn.trainer import (  # noqa: E402
    Metrics,
    RunError,
    build_dataset,
    build_model,
    load_parameters,
    update_population_statistics,
    using_batch_statistics,
)
from scripts import arguments  # noqa: E402

NORMALIZATIONS = {"bn_x": "BN(W_x x)", "bn_h": "BN(W_h h)", "bn_c": "BN(c)"}
READS = {"model", "config", "permutation", "progress"}  # what this script reads of a checkpoint


def evaluate(model: torch.nn.Module, batches: list, with_batch_statistics: list[SequenceBatchNorm]) -> dict[str, float]:
    """Validation loss and accuracy with batch statistics in ``with_batch_statistics``,
    population statistics elsewhere."""
    metrics = Metrics("classification")
    with torch.no_grad(), using_batch_statistics(with_batch_statistics):
        for inputs, targets in batches:
            logits, loss = model(inputs, targets)
            metrics.add(logits, targets, loss)
    return metrics.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=arguments.positive, default=8, help="validation batches to evaluate")
    parser.add_argument("--batch-size", type=arguments.positive, help="images per validation batch (default: the run's)")
    parser.add_argument("--estimate-batches", type=arguments.positive, default=20, help="training batches for update_bn")
    args = parser.parse_args()
    if args.batch_size == 1:
        parser.error("--batch-size must be at least 2: the rows with batch statistics normalize over the batch")
    path = args.run_dir / "best.pt"
    checkpoint = arguments.checkpoint(parser, path, READS)
    cfg = OmegaConf.create(checkpoint["config"])
    # Eight combinations of BN modes would each recompile a compiled step, past dynamo's limit.
    cfg.model.compile = False
    arguments.computed_here(cfg, torch.device("cpu"))
    try:
        dataset = build_dataset(cfg, checkpoint["permutation"])
    except DataError as error:
        parser.error(f"the {cfg.data.name} data of {args.run_dir} are not available: {error}")
    if dataset.task != "classification":
        parser.error(f"{args.run_dir} is a {cfg.data.name} run; this script reads classification runs")
    model = build_model(cfg, dataset)
    try:
        load_parameters(model, checkpoint, path)
    except RunError as error:
        parser.error(str(error))
    norms = {kind: [m for name, m in model.named_modules() if name.split(".")[-1].startswith(kind)]
             for kind in NORMALIZATIONS}
    if not any(norms.values()):
        parser.error(f"{args.run_dir} holds a {cfg.model.name} model, which has no batch normalization")

    update_population_statistics(model, dataset, cfg, args.estimate_batches)
    model.eval()
    batch_size = args.batch_size or cfg.trainer.batch_size
    valid = list(itertools.islice(dataset.batches("valid", batch_size), args.batches))

    images = sum(len(targets) for _, targets in valid)
    print(f"{args.run_dir}: step {checkpoint['progress']['step']}, {images} validation images in batches of "
          f"{batch_size}, population statistics from {args.estimate_batches} training batches\n")
    print(f"| {' | '.join(NORMALIZATIONS.values())} | accuracy | loss |")
    print(f"|{'---|' * len(NORMALIZATIONS)}---:|---:|")
    for choice in itertools.product(("batch", "population"), repeat=len(NORMALIZATIONS)):
        batch_norms = [m for kind, statistics in zip(NORMALIZATIONS, choice) if statistics == "batch" for m in norms[kind]]
        metrics = evaluate(model, valid, batch_norms)
        print(f"| {' | '.join(choice)} | {100 * metrics['accuracy']:.2f} % | {metrics['loss']:.4f} |")


if __name__ == "__main__":
    main()
