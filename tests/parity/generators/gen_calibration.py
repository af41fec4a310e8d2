"""Generate tests/parity/fixtures/calibration.json: BalPoE's ECE / MCE (emasa/BalPoE-CalibratedLT calibration metrics).

Run outside the project on a checkout of the pinned commit: ``utils/calibration_metrics.py``
``ECELoss().loss(values, labels, n_bins=15, logits=...)`` and ``MCELoss().loss(...)``, plus the per-bin arrays
``bin_prop`` / ``bin_acc`` / ``bin_conf`` the ECE object keeps (fractions, not percent). The module imports
``scipy.special.softmax``: scipy is installed into the scratch folder (``<scratch>/site-packages``) when the running
Python lacks it; the project does not depend on it. Cases (one ``np.random.RandomState(41)`` stream, in this order):

* ``logits_case``: logits ``randn(300, 5) * uniform(0.5, 4)`` per row (``0.5 + 3.5 * rand(300)``), rounded to 6
  decimals; labels = the arg-max where ``rand(300) < 0.6``, else ``randint(0, 5, 300)``; ``logits=True`` (the
  original applies scipy's softmax);
* ``edge_case``: 20-class rows [c, (1 - c) / 19, ...] whose confidence c is exactly k/15 or one ulp below/above it
  (k = 1..15; 11/15 + 1 ulp is left out, it is ``ulp_case``), wrong (label k + 1) when (position + k) % 3 == 0,
  ``logits=False``;
* ``ulp_case``: confidences 11/15 + 1 ulp (correct), 0.7 (correct), 0.75 (wrong), ``logits=False``;
* ``float32_probs_case``: a float32 softmax (NumPy: ``exp(z - max) / sum``) of ``float32(randn(200, 10)) * 3``,
  labels = the arg-max where ``rand(200) < 0.5``, else ``randint(0, 10, 200)``, given to the original as float64.

    python tests/parity/generators/gen_calibration.py [--repo-path PATH | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

BALPOE = "emasa/BalPoE-CalibratedLT"
PINNED = {BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8"}
FIXTURE = "calibration.json"
EXTRA_PACKAGES = {"scipy": "scipy==1.17.1"}
N_BINS = 15


def row(conf: float, num_classes: int = 20) -> list[float]:
    """One probability row: the confidence first, the rest spread evenly."""
    return [conf] + [(1 - conf) / (num_classes - 1)] * (num_classes - 1)


def edge_case() -> tuple[list[list[float]], list[int]]:
    """Confidences exactly on the bin edges k/15 and one ulp either side, with mixed correctness."""
    probs, labels = [], []
    for k in range(1, N_BINS + 1):
        edge = k / N_BINS
        for position, conf in enumerate((edge, np.nextafter(edge, 0.0), np.nextafter(edge, 1.0))):
            if k == 11 and position == 2:
                continue  # 11/15 + 1 ulp: the ulp case
            probs.append(row(float(conf)))
            labels.append(k + 1 if (position + k) % 3 == 0 else 0)
    return probs, labels


def random_cases() -> tuple[dict, dict]:
    """The logits case and the float32-probabilities case from one seeded stream."""
    rng = np.random.RandomState(41)
    logits = rng.randn(300, 5) * (0.5 + 3.5 * rng.rand(300))[:, None]
    correct, other = rng.rand(300), rng.randint(0, 5, 300)
    labels = np.where(correct < 0.6, logits.argmax(1), other)
    z32 = rng.randn(200, 10).astype(np.float32) * np.float32(3)
    exp32 = np.exp(z32 - z32.max(axis=1, keepdims=True))
    probs32 = exp32 / exp32.sum(axis=1, keepdims=True)  # float32 throughout
    correct32, other32 = rng.rand(200), rng.randint(0, 10, 200)
    labels32 = np.where(correct32 < 0.5, probs32.argmax(1), other32)
    return ({"logits": np.round(logits, 6).tolist(), "labels": labels.tolist()},
            {"probs": probs32.astype(np.float64).tolist(), "labels": labels32.tolist()})


def evaluate(metrics, values: list, labels: list[int], logits: bool) -> dict:
    """Original ECE and MCE of one case, and the ECE object's bins."""
    ece_object = metrics.ECELoss()
    ece = ece_object.loss(np.array(values, dtype=np.float64), np.array(labels), n_bins=N_BINS, logits=logits)
    mce = metrics.MCELoss().loss(np.array(values, dtype=np.float64), np.array(labels), n_bins=N_BINS, logits=logits)
    return {"ece": float(ece), "mce": float(mce), "bin_prop": ece_object.bin_prop.tolist(),
            "bin_acc": ece_object.bin_acc.tolist(), "bin_conf": ece_object.bin_conf.tolist()}


def generate(root: Path) -> dict:
    """Run the original metrics on the four cases."""
    metrics = _checkout.import_original(root, "utils.calibration_metrics")
    logits_case, float32_case = random_cases()
    edge_probs, edge_labels = edge_case()
    ulp_probs = [row(float(np.nextafter(11 / N_BINS, 1.0))), row(0.7), row(0.75)]
    ulp_labels = [0, 0, 1]
    return {
        "source": f"{BALPOE} utils/calibration_metrics.py ECELoss().loss / MCELoss().loss, n_bins={N_BINS}",
        "logits_case": {**logits_case, **evaluate(metrics, logits_case["logits"], logits_case["labels"], True)},
        "edge_case": {"probs": edge_probs, "labels": edge_labels,
                      **evaluate(metrics, edge_probs, edge_labels, False)},
        "ulp_case": {"probs": ulp_probs, "labels": ulp_labels, "conf": [r[0] for r in ulp_probs],
                     **evaluate(metrics, ulp_probs, ulp_labels, False)},
        "float32_probs_case": {**float32_case,
                               **evaluate(metrics, float32_case["probs"], float32_case["labels"], False)},
    }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.require(EXTRA_PACKAGES, args.scratch)
    _checkout.write_fixture(generate(roots[BALPOE]), args.out)


if __name__ == "__main__":
    main()
