"""An independent NumPy T5 encoder and tiny T5 checkpoints (Hugging Face layout, a trained
sentencepiece model) for the tests of the text encoder, its loaders and the frozen-T5 run."""

import json
import math
import os

import jax
import numpy as np

from phenaki_jax.models import t5 as text

CORPUS = [
    "a red cat walks on the green grass", "the blue dog runs in the park at night",
    "two birds fly over a quiet lake", "a small robot paints a large picture",
    "the sun rises over the snowy mountains", "a man rides a bicycle down the street",
    "waves crash against the rocky shore", "a teddy bear swims under water in the ocean",
    "the camera zooms out to show the whole city", "an astronaut is walking on the moon",
]
D, H, K, F = 32, 4, 8, 64


def tiny_config(feed_forward_proj="gated-gelu", vocab_size=100, num_layers=2):
    return text.T5Config(vocab_size=vocab_size, d_model=D, d_kv=K, d_ff=F, num_layers=num_layers,
                         num_heads=H, feed_forward_proj=feed_forward_proj)


# ------------------------------------------------------------------------------------------
# An independent reference: T5's encoder as the paper and Hugging Face's T5 define it, on
# weights in torch layout (Linear weights [out, in]).
# ------------------------------------------------------------------------------------------

def ref_bucket(rel, num_buckets=32, max_distance=128):
    """Bidirectional T5 bucket of each relative position (key - query), scalar by scalar."""
    out = np.zeros(np.shape(rel), np.int64)
    half = num_buckets // 2
    exact = half // 2
    for idx, r in np.ndenumerate(np.asarray(rel)):
        bucket = half if r > 0 else 0
        n = abs(int(r))
        if n < exact:
            bucket += n
        else:
            log_pos = math.log(n / exact) / math.log(max_distance / exact) * (half - exact)
            bucket += min(half - 1, exact + int(log_pos))
        out[idx] = bucket
    return out


def ref_rms(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def ref_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def ref_encoder(w, num_layers, num_heads, gated, ids, mask):
    """float64 [B, L, D] last hidden state of HF T5EncoderModel with weights `w`."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = w["shared.weight"][ids]
    b, length, d = x.shape
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    table = w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    bias = table[ref_bucket(rel, table.shape[0])].transpose(2, 0, 1)[None]  # [1, H, Lq, Lk]
    bias = bias + np.where(mask[:, None, None, :] > 0, 0.0, -1e30)

    def heads(t):
        return t.reshape(b, length, num_heads, -1)

    for i in range(num_layers):
        p = f"encoder.block.{i}.layer."
        h = ref_rms(x, w[p + "0.layer_norm.weight"])
        q, k, v = (heads(h @ w[f"{p}0.SelfAttention.{n}.weight"].T) for n in "qkv")
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) + bias  # no 1/sqrt(d_kv): T5
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        att = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, -1)
        x = x + att @ w[p + "0.SelfAttention.o.weight"].T
        h = ref_rms(x, w[p + "1.layer_norm.weight"])
        mlp = p + "1.DenseReluDense."
        if gated:
            inner = ref_gelu_tanh(h @ w[mlp + "wi_0.weight"].T) * (h @ w[mlp + "wi_1.weight"].T)
        else:
            inner = np.maximum(h @ w[mlp + "wi.weight"].T, 0)
        x = x + inner @ w[mlp + "wo.weight"].T
    return ref_rms(x, w["encoder.final_layer_norm.weight"])


def random_params(config, seed=0):
    """Every parameter of T5Encoder(config) drawn at random (norm scales around 1)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in text.param_shapes(config).items():
        if name.endswith("scale"):
            flat[name] = 1 + 0.3 * rng.standard_normal(shape)
        elif name.endswith(("embedding", "rel_embedding")):
            flat[name] = rng.standard_normal(shape)
        else:
            flat[name] = rng.standard_normal(shape) / math.sqrt(shape[0])
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.astype(np.float32)
    return tree


def to_hf(params, config):
    """Our tree -> HF T5 tensors (torch layout)."""
    w = {"shared.weight": params["token_embedder"]["embedding"],
         "encoder.final_layer_norm.weight": params["encoder_norm"]["scale"],
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
             params["relpos_bias"]["rel_embedding"].T}
    for i in range(config.num_layers):
        layer, p = params[f"layers_{i}"], f"encoder.block.{i}.layer."
        att = layer["attention"]
        for ours, hf in (("query", "q"), ("key", "k"), ("value", "v")):
            w[f"{p}0.SelfAttention.{hf}.weight"] = att[ours]["kernel"].reshape(D, H * K).T
        w[f"{p}0.SelfAttention.o.weight"] = att["out"]["kernel"].reshape(H * K, D).T
        w[p + "0.layer_norm.weight"] = layer["pre_attention_layer_norm"]["scale"]
        w[p + "1.layer_norm.weight"] = layer["pre_mlp_layer_norm"]["scale"]
        for name, value in layer["mlp"].items():
            w[f"{p}1.DenseReluDense.{name}.weight"] = value["kernel"].T
    return {k: np.ascontiguousarray(v, np.float32) for k, v in w.items()}


def flax_forward(config, params, ids, mask):
    return np.asarray(jax.jit(text.T5Encoder(config).apply)({"params": params}, ids, mask))


def random_batch(vocab_size, seed=1):
    rng = np.random.default_rng(seed)
    lengths = np.array([9, 5, 1])
    ids = rng.integers(3, vocab_size, (3, 9)).astype(np.int32)
    mask = (np.arange(9)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0).astype(np.int32), mask


def assert_close_at_real(actual, expected, mask, atol=1e-4):
    real = mask.astype(bool)
    np.testing.assert_allclose(actual[real], expected[real], atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------

def train_spiece(directory):
    import sentencepiece as spm

    path = os.path.join(directory, "spiece.model")
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 5), model_writer=f, vocab_size=64,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            hard_vocab_limit=False, minloglevel=2)
    return path


HF_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": F, "d_kv": K, "d_model": D,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
    "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
    "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "num_decoder_layers": 1, "num_heads": H, "num_layers": 2,
    "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "vocab_size": 100,
}


def write_hf(directory, tensors, config=HF_CONFIG):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
