"""Datasets: the embedded procedural images and image folders."""

from .folders import ImageFolderDataset, PaperTransform, mean_image
from .synthetic import CLASSES, LANDMARKS, SyntheticShapes, render_image

__all__ = ["CLASSES", "LANDMARKS", "ImageFolderDataset", "PaperTransform", "SyntheticShapes", "mean_image",
           "render_image"]
