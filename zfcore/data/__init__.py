"""Datasets: the embedded procedural images, image folders, and how images
become a model's input (``Preprocess``)."""

from .folders import ImageFolderDataset, PaperTransform, mean_image, read_folder, scan_folder
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .synthetic import CLASSES, LANDMARKS, SyntheticShapes, render_image

__all__ = ["CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "LANDMARKS", "ImageFolderDataset", "PaperTransform",
           "Preprocess", "SyntheticShapes", "mean_image", "read_folder", "render_image", "scan_folder"]
