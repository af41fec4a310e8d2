"""Data layer: LT data sets, class-count profiles, batch augmentation, samplers and loaders (importing registers them)."""
from data_loader import augment, datasets, loader, subsets, views  # noqa: F401
