"""`pip install -e .`: the package, its console scripts, and requirements.txt as its one list of dependencies."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="apga",
    version="0.3.0",
    description="Adversarial Policy Gradient Augmentation (MICCAI 2019): reference implementation on MURA",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["apga", "apga.*"]),
    py_modules=["apga_mura"],
    python_requires=">=3.10",
    install_requires=requirements("requirements.txt"),
    extras_require={
        "tensorboard": ["tensorboard>=2.14"],  # --tensorboard 1
        # the tests compare against pytorch-grad-cam and Captum, decode NEMA's CR radiographs of pydicom-data,
        # and read the TensorBoard logs back
        "test": ["pytest>=7.0", "pytest-xdist>=3.0", "grad-cam>=1.5", "captum>=0.7", "pydicom-data>=1.0", "tensorboard>=2.14"],
    },
    entry_points={"console_scripts": [
        "apga-mura=apga.cli:entry_point",
        "apga-predict=apga.predict:entry_point",
        "apga-report=apga.report:entry_point",
        "apga-sweep=apga.sweep:entry_point",
    ]},
)
