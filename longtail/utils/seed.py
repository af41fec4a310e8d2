"""Seeding and counter-based random streams, so every random draw is a pure function of (seed, epoch, step)."""
from __future__ import annotations

import enum
import random
from typing import Any

import numpy as np
import torch


class Stream(enum.IntEnum):
    """Purpose tags of the counter-based random streams: (seed, epoch, step, Stream.X) never collide across uses.

    The values are part of what a seed means (changing one changes every result drawn from it): only append.
    """

    ORDER = 1              # training order of an epoch (samplers)
    AUGMENT = 2            # batch / per-image training augmentation
    COMBINER = 3           # mixup / CutMix permutation and lambda
    HOLDOUT = 11           # held-out validation part of a training split
    OPEN = 12              # "other" images of a class-group view
    VIEW_ORDER = 21        # test-time views: order of the test images
    VIEW1 = 22             # test-time views: first view
    VIEW2 = 23             # test-time views: second view
    CALIBRATION_ORDER = 31  # order of cached logits in a calibration stage
    LOSS_DRAWS = 41        # a loss's own random draws (e.g. target priors sampled for training)
    LOSS_ORDER = 42        # per-epoch order of a loss's pre-drawn samples
    TEST_PRIOR = 51        # sampled test priors (Dirichlet, tweak-one) and their image subsets
    TEST_TIME_ORDER = 52   # batch order of a test-time procedure run on saved view logits


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (used for weight init); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    # cuDNN picks the fastest convolution algorithm per input shape (shapes are fixed in training); the choice is
    # timing-dependent, so deterministic runs keep the default algorithms
    torch.backends.cudnn.benchmark = not deterministic


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (seed, epoch, step, purpose), independent across keys."""
    state = np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def torch_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``keys``; creating one per batch makes resume trivial."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*keys))
    return gen


def numpy_generator(*keys: int) -> np.random.Generator:
    """A NumPy generator seeded from ``keys`` (used for host-side draws such as the mixup lambda)."""
    return np.random.default_rng(derive_seed(*keys))


def get_rng_state() -> dict[str, Any]:
    """Global RNG states as plain data (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`get_rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
