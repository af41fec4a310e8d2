"""Run logging: console + plain train.log, optional TensorBoard scalars, tqdm progress bars."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm


FILE_ONLY = {"file_only": True}


def get_logger(name: str = "lt", log_file: str | Path | None = None, quiet: bool = False) -> logging.Logger:
    """A logger writing plain messages to stderr and, when given, timestamped lines to ``log_file``; records logged
    with ``extra=FILE_ONLY`` (progress lines) go to the file only."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    if not quiet:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        console.addFilter(lambda record: not getattr(record, "file_only", False))  # the console has a progress bar
        logger.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


class ScalarWriter:
    """TensorBoard scalar writer that degrades to a no-op when tensorboard is missing or disabled."""

    def __init__(self, log_dir: str | Path | None, enabled: bool = True) -> None:
        self._writer = None
        if enabled and log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return
            self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        """Whether scalars are written anywhere."""
        return self._writer is not None

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Log several scalars at once under their own tags."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()


def progress(iterable: Iterable[Any], total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; off when stderr is not a terminal or when disabled (non-primary DDP ranks)."""
    return tqdm(iterable, total=total, desc=desc, disable=None if enabled else True, leave=False, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)
