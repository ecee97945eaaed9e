package ai.onnxruntime;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public final class OrtEnvironment implements AutoCloseable {
    public static OrtEnvironment getEnvironment() { throw new UnsupportedOperationException("stub"); }
    public OrtSession createSession(String modelPath, OrtSession.SessionOptions options) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    @Override public void close() {}
}
