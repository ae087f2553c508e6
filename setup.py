"""Packaging for ActiveLabel: one distribution, two import packages.

``lib/`` is the package ``activelabel`` and ``strategies/`` is ``activelabel.strategies``.
Runtime dependencies are pinned in ``requirements.txt`` and installed by ``make install``
before this package (torch must come first, from its CPU build); ``install_requires`` only
names what the code imports directly so that ``pip check`` stays meaningful.
"""

from __future__ import annotations

from setuptools import setup

setup(
    name="activelabel",
    version="0.1.0",
    description="Active-learning labeling of 3D medical images on MONAI Label",
    python_requires=">=3.10",
    packages=[
        "activelabel",
        "activelabel.tasks",
        "activelabel.data",
        "activelabel.pacs",
        "activelabel.simulation",
        "activelabel.strategies",
    ],
    package_dir={
        "activelabel": "lib",
        "activelabel.tasks": "lib/tasks",
        "activelabel.data": "lib/data",
        "activelabel.pacs": "lib/pacs",
        "activelabel.simulation": "lib/simulation",
        "activelabel.strategies": "strategies",
    },
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
