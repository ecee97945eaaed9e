package ai.onnxruntime;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public abstract class OnnxTensorLike implements OnnxValue {
}
