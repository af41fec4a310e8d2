"""Data layer: LT data sets, class-count profiles, batch augmentation, samplers and loaders (importing registers them)."""
from longtail.data_loader import (augment, datasets, image_lists, image_loader, image_transforms, loader,  # noqa: F401
                                   multiview, shift_protocols, subsets, test_views, views)
