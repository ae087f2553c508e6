"""Packaging for ActiveLabel: one distribution, two import packages.

``lib/`` is a src folder holding the package ``activelabel``; ``strategies/`` is
``activelabel.strategies``.  Runtime dependencies are pinned in ``requirements.txt`` and
installed by ``make install`` before this package (torch must come first, from its CPU
build); ``install_requires`` only names what the code imports directly so that
``pip check`` stays meaningful.
"""

from __future__ import annotations

from setuptools import find_packages, setup

setup(
    name="activelabel",
    version="0.1.0",
    description="Active-learning labeling of 3D medical images on MONAI Label",
    python_requires=">=3.10",
    packages=[*find_packages("lib"), "activelabel.strategies"],
    package_dir={"": "lib", "activelabel.strategies": "strategies"},
    # The starting models shipped for the phantom sample data (activelabel.data.starter_model).
    package_data={"activelabel.data": ["starters/*.pt"]},
    install_requires=[
        "torch==2.13.0",
        "monai==1.6.1",
        "monailabel==0.8.5",
        "numpy<2",
        "nibabel",
        "SimpleITK",
        "pydicom",
        "highdicom",
        "dicomweb-client",
        "fastapi",
        "uvicorn",
        "requests",
        "tqdm",
    ],
    entry_points={"console_scripts": ["activelabel = activelabel.cli:main"]},
)
