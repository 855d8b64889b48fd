"""`zerolm similar` (defined beside `embed`, which shares its options)."""

from zerolm.cli.embed import register_similar as register

__all__ = ["register"]
