"""Backbones (timm models and offline weight sources)."""
