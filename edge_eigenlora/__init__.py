"""edge-eigenlora: recycle LoRA adapters into a shared subspace and ship tasks as coefficients.

Importing the package has no side effects and imports neither torch nor onnxruntime: the
workstation stages (torch) and the device runtime (onnxruntime + numpy) import what they need.
"""

__version__ = "0.1.0"
