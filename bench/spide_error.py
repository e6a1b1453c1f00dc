"""Relative error of the SPIDE parameter gradient against the implicit gradient of the official
rule (a dense solve of ``(I - J^T) beta = dL/da`` with the mask ``1[0 < a < 1]`` on the forward
rates) as the backward time T_b grows, on the small feedback nets of the SPIDE tests
(``tests/spide_fixture.py``: single-layer F-MLP and F-conv with batch norm, a five-layer conv
feedback net without, LeNet with zero feedback; float64, ``grad_scale`` putting the largest |beta|
at half the maximal backward rate).

    python bench/spide_error.py
    python bench/spide_error.py --T-b 50 250 2000 --models f_mlp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from spide_fixture import relative_errors  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T-b", nargs="+", type=int, default=[50, 100, 250, 1000, 2000])
    models = ["f_mlp", "f_conv", "multilayer_f", "lenet_zero"]
    p.add_argument("--models", nargs="+", default=models, choices=models)
    args = p.parse_args()
    table = {m: relative_errors(m, args.T_b) for m in args.models}
    print("| T_b | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    for T_b in args.T_b:
        print(f"| {T_b} | " + " | ".join(f"{100 * table[m][T_b]:.2f}%" for m in args.models) + " |")


if __name__ == "__main__":
    main()
