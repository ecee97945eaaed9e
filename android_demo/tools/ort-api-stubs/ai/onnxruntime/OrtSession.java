package ai.onnxruntime;

import java.util.Iterator;
import java.util.Map;
import java.util.Optional;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public class OrtSession implements AutoCloseable {
    public Result run(Map<String, ? extends OnnxTensorLike> inputs) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    @Override public void close() throws OrtException {}

    public static class SessionOptions implements AutoCloseable {
        public SessionOptions() {}
        public void setIntraOpNumThreads(int numThreads) throws OrtException {}
        public void setMemoryPatternOptimization(boolean memoryPatternOptimization) throws OrtException {}
        @Override public void close() {}
    }

    public static class Result implements AutoCloseable, Iterable<Map.Entry<String, OnnxValue>> {
        public Optional<OnnxValue> get(String key) { throw new UnsupportedOperationException("stub"); }
        public OnnxValue get(int index) { throw new UnsupportedOperationException("stub"); }
        @Override public Iterator<Map.Entry<String, OnnxValue>> iterator() { throw new UnsupportedOperationException("stub"); }
        @Override public void close() {}
    }
}
