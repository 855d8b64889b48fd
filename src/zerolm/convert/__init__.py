"""Checkpoint conversion to and from other libraries (the only place that knows their key names)."""

from zerolm.convert.hf import export_hf, is_hf_dir, load_hf

__all__ = ["export_hf", "is_hf_dir", "load_hf"]
