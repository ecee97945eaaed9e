package ai.onnxruntime;

import java.nio.FloatBuffer;
import java.nio.LongBuffer;

/** Compile-time stand-in (signatures of ONNX Runtime's Java API); never shipped, never run. */
public class OnnxTensor extends OnnxTensorLike {
    public static OnnxTensor createTensor(OrtEnvironment env, FloatBuffer data, long[] shape) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    public static OnnxTensor createTensor(OrtEnvironment env, LongBuffer data, long[] shape) throws OrtException {
        throw new UnsupportedOperationException("stub");
    }
    @Override public Object getValue() throws OrtException { throw new UnsupportedOperationException("stub"); }
    @Override public void close() {}
}
