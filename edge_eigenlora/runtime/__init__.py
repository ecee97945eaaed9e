"""The device runtime: open a bundle, run tasks, train new ones. onnxruntime + numpy (+ tokenizers) only.

Never imports torch, transformers or onnx (tests/test_runtime.py proves it with torch made unimportable).

    from edge_eigenlora.runtime import DeviceRuntime
    rt = DeviceRuntime("bundle/")
    rt.predict(["great film"], task="sentiment")
"""

from edge_eigenlora.runtime.session import DeviceRuntime, LoadedTask, RuntimeOptions

__all__ = ["DeviceRuntime", "LoadedTask", "RuntimeOptions"]
