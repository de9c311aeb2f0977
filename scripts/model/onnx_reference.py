"""An exported model run straight through onnxruntime (no moa), as moa.json describes it: the
reference the export checks compare against (check_korsts.py, bench_st.py --check-onnx)."""
import json
import os

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class OnnxEmbedder:
    def __init__(self, model_dir, threads=None):
        self.config = json.load(open(os.path.join(model_dir, "moa.json")))
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def embed(self, texts):
        """Vectors (pooled, normalised per moa.json) and token encodings of `texts`, as given."""
        enc = self.tok.encode_batch(list(texts))
        width = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), width), np.int64)
        mask = np.zeros((len(enc), width), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        if self.config["pooling"] == "cls":
            vectors = hidden[:, 0]
        else:
            vectors = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        if self.config.get("normalize", True):
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, enc
