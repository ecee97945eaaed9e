package ai.onnxruntime;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public class OrtException extends Exception {
    public OrtException(String message) { super(message); }
}
