"""The T5 text encoder against an independent NumPy forward pass, its HF and T5X loaders, the
tokenizers, and the phenaki-embed command."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from t5_reference import (
    CORPUS,
    HF_CONFIG,
    D,
    H,
    K,
    assert_close_at_real,
    flax_forward,
    random_batch,
    random_params,
    ref_bucket,
    ref_encoder,
    tiny_config,
    to_hf,
    train_spiece,
    write_hf,
)

from phenaki_jax.models import t5 as text


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_encoder_matches_numpy_reference(proj):
    config = tiny_config(proj)
    params = random_params(config)
    ids, mask = random_batch(config.vocab_size)
    out = flax_forward(config, params, ids, mask)
    assert out.shape == (3, 9, D) and out.dtype == np.float32
    expected = ref_encoder(to_hf(params, config), 2, H, proj == "gated-gelu", ids, mask)
    assert_close_at_real(out, expected, mask)
    # Padding is invisible to real positions: the same prompt padded further gives the same rows.
    longer_ids, longer_mask = np.pad(ids, ((0, 0), (0, 4))), np.pad(mask, ((0, 0), (0, 4)))
    assert_close_at_real(flax_forward(config, params, longer_ids, longer_mask)[:, :9], out, mask)


def test_bfloat16_compute_stays_close():
    config = tiny_config()
    params = random_params(config)
    ids, mask = random_batch(config.vocab_size)
    ref = flax_forward(config, params, ids, mask)
    bf16 = flax_forward(text.T5Config(**{**config.to_dict(), "dtype": "bfloat16"}), params, ids,
                        mask)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - ref)[mask > 0].mean() < 0.05


def test_params_carry_logical_axes():
    config = tiny_config()
    boxed = jax.eval_shape(text.T5Encoder(config).init, jax.random.key(0),
                           jax.ShapeDtypeStruct((1, 4), np.int32))["params"]
    names = jax.tree.leaves(jax.tree.map(lambda b: b.names, boxed,
                                         is_leaf=lambda x: hasattr(x, "names")),
                            is_leaf=lambda x: isinstance(x, tuple))
    from phenaki_jax.sharding import LOGICAL_AXIS_RULES

    known = {k for k, _ in LOGICAL_AXIS_RULES} | {None}
    assert names and all(set(n) <= known for n in names), names
    assert boxed["layers_0"]["attention"]["query"]["kernel"].names == ("embed", "heads", "kv")
    assert boxed["token_embedder"]["embedding"].names == ("vocab", "embed")


def test_relative_position_buckets_follow_t5():
    # 32 buckets, max distance 128: 16 per direction, 8 exact, keys after the query on top.
    hand = {0: 0, -1: 1, -7: 7, -8: 8, -15: 9, -16: 10, -127: 15, -128: 15, -5000: 15,
            1: 17, 7: 23, 8: 24, 20: 26, 128: 31, 5000: 31}
    got = text.relative_position_bucket(np.array(list(hand)))
    assert dict(zip(hand, got.tolist(), strict=True)) == hand
    rel = np.arange(-300, 301)
    for buckets, distance in ((32, 128), (16, 64), (64, 256)):
        np.testing.assert_array_equal(text.relative_position_bucket(rel, buckets, distance),
                                      ref_bucket(rel, buckets, distance))


def test_config_from_hf_dict():
    v11 = text.T5Config.from_hf_dict({"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64,
                                      "num_layers": 2, "num_heads": 4,
                                      "feed_forward_proj": "gated-gelu"})
    assert v11.is_gated and v11.activation == "gelu_tanh"
    assert text.T5Config.from_hf_dict(v11.to_dict()) == v11
    v10 = text.T5Config.from_hf_dict({"feed_forward_proj": "relu", "d_model": 512})
    assert not v10.is_gated and v10.activation == "relu" and v10.vocab_size == 32128
    # Newer HF files spell the activation out; those keys win, as in HF.
    spelled = text.T5Config.from_hf_dict({"dense_act_fn": "gelu_new", "is_gated_act": True})
    assert spelled.feed_forward_proj == "gated-gelu"
    with pytest.raises(text.TextEncoderError, match="umt5"):
        text.T5Config.from_hf_dict({"model_type": "umt5"})
    cfg = text.trainable_t5_config(64, 2, 4, 128)
    assert (cfg.d_kv, cfg.vocab_size, cfg.feed_forward_proj) == (16, 259, "gated-gelu")


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("hf_t5"))
    config = tiny_config()
    params = random_params(config, seed=3)
    tensors = to_hf(params, config)
    rng = np.random.default_rng(4)
    # Decoder and LM-head tensors a full checkpoint has; the encoder loader must ignore them.
    for name, shape in (("decoder.block.0.layer.0.SelfAttention.q.weight", (H * K, D)),
                        ("decoder.block.0.layer.1.EncDecAttention.k.weight", (H * K, D)),
                        ("decoder.final_layer_norm.weight", (D,)), ("lm_head.weight", (100, D))):
        tensors[name] = rng.standard_normal(shape).astype(np.float32)
    write_hf(directory, tensors)
    train_spiece(directory)
    return directory, params, tensors


def test_load_hf_t5_matches_reference(hf_dir, tmp_path):
    from safetensors.numpy import save_file

    directory, params, tensors = hf_dir
    config, loaded = text.load_t5(directory)
    assert config == tiny_config()
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(loaded))
    ids, mask = random_batch(config.vocab_size, seed=5)
    assert_close_at_real(flax_forward(config, loaded, ids, mask),
                         ref_encoder(tensors, 2, H, True, ids, mask), mask)

    # The same weights in two shards behind model.safetensors.index.json.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(HF_CONFIG))
    names = sorted(tensors)
    weight_map = {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / file))
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    jax.tree.map(np.testing.assert_array_equal, text.load_t5(str(sharded))[1], params)


def tensorstore_write(path, array):
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                         "chunks": list(array.shape), "dtype": "<f4"}}
    ts.open(spec, create=True).result().write(array).result()


def write_t5x(directory, params, config, root):
    """A T5X checkpoint of the encoder (plus a decoder and optimizer state that must be ignored):
    some leaves inline, some in tensorstore referred to by a T5X spec dict, by an orbax
    'PLACEHOLDER://' string or by the bare name."""
    from flax import serialization

    os.makedirs(directory, exist_ok=True)
    count = [0]

    def store(name, array):
        """Cycles through the storage kinds."""
        count[0] += 1
        rel = f"target.{name.replace('/', '.')}"  # T5X's file name: the '/' path with dots
        kind = count[0] % 4
        if kind == 0:
            return array
        tensorstore_write(os.path.join(directory, rel), array)
        if kind == 1:
            return {"driver": "zarr", "dtype": "float32",
                    "kvstore": {"driver": "file", "path": rel},
                    "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                                 "chunks": np.array(array.shape)}}
        return ("PLACEHOLDER://" + rel) if kind == 2 else rel

    encoder = {"relpos_bias": {"rel_embedding": store("encoder/relpos_bias/rel_embedding",
                                                      params["relpos_bias"]["rel_embedding"])},
               "encoder_norm": {"scale": store("encoder/encoder_norm/scale",
                                               params["encoder_norm"]["scale"])}}
    for i in range(config.num_layers):
        layer, p = params[f"layers_{i}"], f"encoder/layers_{i}"
        att = {n: {"kernel": store(f"{p}/attention/{n}/kernel",
                                   layer["attention"][n]["kernel"].reshape(D, H * K))}
               for n in ("query", "key", "value")}
        att["out"] = {"kernel": store(f"{p}/attention/out/kernel",
                                      layer["attention"]["out"]["kernel"].reshape(H * K, D))}
        encoder[f"layers_{i}"] = {
            "attention": att,
            "pre_attention_layer_norm": {"scale": layer["pre_attention_layer_norm"]["scale"]},
            "pre_mlp_layer_norm": {"scale": store(f"{p}/pre_mlp_layer_norm/scale",
                                                  layer["pre_mlp_layer_norm"]["scale"])},
            "mlp": {n: {"kernel": store(f"{p}/mlp/{n}/kernel", v["kernel"])}
                    for n, v in layer["mlp"].items()},
        }
    target = {"token_embedder": {"embedding": params["token_embedder"]["embedding"]},
              "encoder": encoder,
              "decoder": {"decoder_norm": {"scale": np.ones(D, np.float32)},
                          "layers_0": {"self_attention": {"query": {"kernel": "missing.on.disk"}}}}}
    if root == "optimizer":
        contents = {"version": 3, "optimizer": {
            "target": target,
            "state": {"step": np.array(100), "param_states": {"token_embedder": {
                "embedding": {"v_row": np.zeros(100, np.float32)}}}}}}
    else:
        contents = {"target": target}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))


@pytest.mark.parametrize("proj,root", [("gated-gelu", "optimizer"), ("relu", "target")])
def test_load_t5x_equals_hf(tmp_path, proj, root):
    config = tiny_config(proj)
    params = random_params(config, seed=7)
    hf = str(tmp_path / "hf")
    act = {"gated-gelu": ("gelu_new", True), "relu": ("relu", False)}[proj]
    write_hf(hf, to_hf(params, config), {**HF_CONFIG, "feed_forward_proj": proj,
                                         "dense_act_fn": act[0], "is_gated_act": act[1]})
    # A T5X model dir: the loader takes its latest checkpoint_N.
    model_dir = tmp_path / "t5x"
    write_t5x(str(model_dir / "checkpoint_100"), params, config, root)
    os.makedirs(model_dir / "checkpoint_50")  # no `checkpoint` file: not a checkpoint
    hf_config, hf_params = text.load_hf_t5(hf)
    t5x_config, t5x_params = text.load_t5(str(model_dir))
    assert t5x_config == hf_config == config
    jax.tree.map(np.testing.assert_array_equal, t5x_params, hf_params)
    assert jax.tree.structure(t5x_params) == jax.tree.structure(params)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_loader_errors_name_the_file_and_tensor(tmp_path, hf_dir):
    _, params, tensors = hf_dir
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(str(tmp_path / "nowhere"))
    assert "not found" in one_line(e) and "nowhere" in one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(str(tmp_path / "empty"))
    assert "config.json" in one_line(e) and "checkpoint" in one_line(e)

    name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    missing = str(tmp_path / "missing")
    write_hf(missing, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(missing)
    assert name in one_line(e) and "model.safetensors" in one_line(e)

    bad = str(tmp_path / "bad")
    write_hf(bad, {**tensors, name: tensors[name][:, :-1].copy()})
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(bad)
    assert name in one_line(e) and "shape" in one_line(e)

    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(bad)
    assert "model.safetensors" in one_line(e)

    import shutil

    t5x = tmp_path / "t5x"
    write_t5x(str(t5x), params, tiny_config(), "optimizer")
    stored_apart = sorted(f for f in os.listdir(t5x) if f.startswith("target.encoder.layers_1"))
    shutil.rmtree(t5x / stored_apart[0])
    with pytest.raises(text.TextEncoderError) as e:
        text.load_t5(str(t5x))
    assert stored_apart[0] in one_line(e) and "missing" in one_line(e)


# ------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------

def test_sentencepiece_tokenizer_appends_eos_pads_and_truncates(hf_dir):
    import sentencepiece as spm

    path = os.path.join(hf_dir[0], "spiece.model")
    tok = text.SentencePieceTokenizer(path)
    sp = spm.SentencePieceProcessor(model_file=path)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 0, sp.get_piece_size())
    texts = ["a red cat", CORPUS[7] + " " + CORPUS[8], "dog"]
    ids, mask, truncated = tok.encode_batch(texts, 12)
    assert ids.dtype == np.int32 and ids.shape == mask.shape == (3, 12)
    for row, t in zip(range(3), texts, strict=True):
        pieces = sp.encode(t) + [1]
        if len(pieces) > 12:
            pieces = pieces[:11] + [1]
        assert ids[row].tolist() == pieces + [0] * (12 - len(pieces))
        assert mask[row].tolist() == [1] * len(pieces) + [0] * (12 - len(pieces))
    assert truncated == [1]
    assert ids[1, -1] == 1 and len(sp.encode(texts[1])) > 11
    with pytest.raises(text.TextEncoderError, match="not found"):
        text.SentencePieceTokenizer(path + ".nope")


def test_byte_tokenizer():
    tok = text.ByteTokenizer()
    ids, mask, truncated = tok.encode_batch(["ab", "é", "abcdef"], 5)
    assert ids.tolist() == [[100, 101, 1, 0, 0], [198, 172, 1, 0, 0], [100, 101, 102, 103, 1]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated == [2] and (tok.vocab_size, tok.eos_id, tok.pad_id) == (259, 1, 0)


# ------------------------------------------------------------------------------------------
# phenaki-embed
# ------------------------------------------------------------------------------------------

def test_embed_cli_end_to_end(tmp_path, hf_dir):
    import sentencepiece as spm

    directory, _, tensors = hf_dir
    prompts = ["a red cat walks", "", "  the blue dog runs in the park  ",
               " ".join(CORPUS[:3]), "a robot"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n\n")
    out = tmp_path / "sub" / "emb.npz"
    proc = run_cli("embed", "--encoder=t5", f"--checkpoint={directory}",
                   f"--prompts_file={prompts_file}", f"--output={out}", "--max_length=12",
                   "--batch_size=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = [p.strip() for p in prompts if p.strip()]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(directory, "spiece.model"))
    too_long = sum(len(sp.encode(p)) > 11 for p in kept)
    assert 0 < too_long < len(kept)
    assert f"{too_long} of 4 prompts" in proc.stderr and "truncated" in proc.stderr
    with np.load(out) as npz:
        data = {k: npz[k] for k in npz.files}
    assert set(data) == {"ids", "mask", "embeddings", "prompts"}
    assert data["prompts"].tolist() == kept
    assert data["ids"].dtype == np.int32 and data["ids"].shape == (4, 12)
    assert data["mask"].shape == (4, 12)
    assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (4, 12, D)
    for row, p in enumerate(kept):
        pieces = sp.encode(p)[:11] + [1]
        assert data["ids"][row].tolist() == pieces + [0] * (12 - len(pieces)), p
        assert data["mask"][row].tolist() == [1] * len(pieces) + [0] * (12 - len(pieces))
    expected = ref_encoder(tensors, 2, H, True, data["ids"], data["mask"])
    assert_close_at_real(data["embeddings"], expected, data["mask"])
    assert not [f for f in os.listdir(out.parent) if f.startswith(".tmp-")]


def test_embed_cli_errors(tmp_path, hf_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    out = str(tmp_path / "e.npz")
    proc = run_cli("embed", "--encoder=t5", f"--checkpoint={hf_dir[0]}",
                   f"--prompts_file={empty}", f"--output={out}")
    assert_one_line_error(proc, str(empty))
    proc = run_cli("embed", "--encoder=t5", f"--checkpoint={tmp_path / 'no_such_dir'}",
                   f"--prompts_file={empty}", f"--output={out}")
    assert_one_line_error(proc, "no_such_dir")
    assert not os.path.exists(out)


def test_a_sharded_cache_holds_the_same_embeddings_and_opens_shards_lazily(tmp_path, hf_dir):
    from phenaki_jax.data.embedding_cache import CacheMiss, EmbeddingCache, shard_of

    directory, _, tensors = hf_dir
    prompts = [f"{c} {s} moves" for c in ("red", "blue", "green") for s in ("cat", "dog")]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts + prompts[:2]) + "\n")  # two repeated
    out = tmp_path / "cache"
    proc = run_cli("embed", "--encoder=t5", f"--checkpoint={directory}",
                   f"--prompts_file={prompts_file}", f"--output={out}", "--max_length=8",
                   "--shards=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["cache.json", "shard-00000.npz", "shard-00001.npz",
                                       "shard-00002.npz"]
    for k in range(3):  # every caption lives in the shard its hash names, once
        with np.load(out / f"shard-{k:05d}.npz") as npz:
            assert all(shard_of(str(p), 3) == k for p in npz["prompts"])
    cache = EmbeddingCache(str(out), max_length=8, embed_dim=D, max_open=1)
    assert cache.open_shards == 0
    emb, mask = cache.lookup(prompts)
    assert cache.open_shards == 1  # the least recently used shards were let go
    ids = np.stack([np.asarray(sp_ids) for sp_ids in _ids_of(directory, prompts, 8)])
    expected = ref_encoder(tensors, 2, H, True, ids, mask)
    assert_close_at_real(emb, expected, mask)
    with pytest.raises(CacheMiss):
        cache.lookup(["a caption nobody embedded"])
    proc = run_cli("embed", "--encoder=t5", f"--checkpoint={directory}",
                   f"--prompts_file={prompts_file}", f"--output={tmp_path / 'x.npz'}",
                   "--shards=2")
    assert_one_line_error(proc, "--shards=2 writes a directory")


def _ids_of(directory, prompts, length):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(directory, "spiece.model"))
    for p in prompts:
        pieces = sp.encode(p)[:length - 1] + [1]
        yield pieces + [0] * (length - len(pieces))
