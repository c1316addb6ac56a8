"""Evaluation: classification metrics, mask-quality measures, occlusion maps and their floors."""
