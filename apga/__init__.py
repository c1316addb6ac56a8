"""APGA: Adversarial Policy Gradient Augmentation (Cheng, Iriondo et al., MICCAI 2019).

Importing the package has no side effects; see `apga.experiment.run` for the entry point.
"""
__version__ = "0.3.0"
