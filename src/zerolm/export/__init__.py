"""Export finished models to other runtimes: ONNX (`export_onnx`, run back by
`zerolm.export.runtime` under onnxruntime, which `zerolm.load` uses for an exported
directory). Like compression, export works on a model from the outside: the model never
learns about it.

Submodules import onnx / onnxruntime only when they run, so importing this package
needs neither.
"""

from zerolm.export.runtime import is_onnx_dir, load_onnx

__all__ = ["export_onnx", "is_onnx_dir", "load_onnx"]


def export_onnx(*args, **kwargs):
    """See zerolm.export.onnx.export_onnx."""
    from zerolm.export.onnx import export_onnx as _export

    return _export(*args, **kwargs)
