"""Dynamic int8 quantization of an embedding model's ONNX graph (weights of MatMul/Gemm to int8,
activations quantized at run time), with onnxruntime's own quantizer. Smaller and usually faster
on CPU, at a quality cost that scripts/eval-korsts.sh measures.

usage: python quantize_int8.py IN.onnx OUT.onnx
"""

import sys

from onnxruntime.quantization import QuantType, quantize_dynamic


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
