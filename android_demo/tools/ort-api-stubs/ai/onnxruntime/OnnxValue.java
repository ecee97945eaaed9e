package ai.onnxruntime;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public interface OnnxValue extends AutoCloseable {
    Object getValue() throws OrtException;
    @Override void close();
}
