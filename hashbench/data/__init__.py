"""Protocols (datasets with their splits and evaluation rules) and split helpers."""

from .splits import per_class_sample

__all__ = ["per_class_sample"]
