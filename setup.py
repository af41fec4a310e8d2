"""Package layout (metadata lives in pyproject.toml): one top-level import name, ``longtail``.

The code lives in ``longtail/``. ``configs/`` and ``data_txt/`` stay at the repository root, where ``train.py`` and
the docs use them from a clone, and travel in the wheel as the data packages ``longtail.configs`` and
``longtail.data_txt`` (``longtail.resources`` finds them either way).
"""
from setuptools import find_packages, setup

DATA_PACKAGES = {"longtail.configs": "configs", "longtail.data_txt": "data_txt"}

setup(
    packages=find_packages(include=["longtail", "longtail.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={"longtail.configs": ["**/*.json"], "longtail.data_txt": ["**/*.txt", "*.sha256", "*.md"]},
)
