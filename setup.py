from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="apga",
    version="0.1.0",
    description="Adversarial Policy Gradient Augmentation (MICCAI 2019): reference implementation on MURA",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["apga", "apga.*"]),
    py_modules=["apga_mura"],
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy>=1.24", "pandas>=2.0", "tqdm>=4.60", "fire>=0.5",
                      "pillow>=9.0", "scikit-learn>=1.2", "scipy>=1.9", "matplotlib>=3.6"],
    extras_require={"test": ["pytest>=7.0", "grad-cam>=1.5", "captum>=0.7"]},
    entry_points={"console_scripts": ["apga-mura=apga.cli:entry_point"]},
)
