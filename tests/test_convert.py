"""Checkpoint conversion: synthetic checkpoints in every supported layout, built from tiny transformers
models (no fairseq/s3prl needed), converted back and compared tensor by tensor and output by output."""
from __future__ import annotations

import argparse
import json
import sys
import types

import pytest
import torch

from conftest import tiny_test_config
from speechft.models import keymaps as km
from speechft.models.convert import convert_checkpoint
from speechft.models.encoder import HFEncoder
from speechft.models.io import build_model_from_config, load_encoder

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
             activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)


def tiny_model(kind: str = "hubert", seed: int = 0, **over):
    from transformers import Wav2Vec2Config, WavLMConfig

    if kind == "hubert":
        cfg = tiny_test_config(feat_extract_norm="group", mask_time_prob=0.05, **over)
    elif kind == "wav2vec2":
        cfg = Wav2Vec2Config(**{**SMALL, "feat_extract_norm": "layer", "do_stable_layer_norm": True, **over})
    else:
        cfg = WavLMConfig(**{**SMALL, "feat_extract_norm": "group", **over})
    model = build_model_from_config(cfg, seed=seed).eval()
    with torch.no_grad():  # non-trivial norms/biases, so a mix-up of two tensors cannot go unnoticed
        for name, p in model.named_parameters():
            if p.dim() == 1 or "gru_rel_pos_const" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def fairseq_state(model) -> dict:
    c = model.config
    out = {}
    for k, v in model.state_dict().items():
        fk = km.hf_to_fairseq_key(k, c.model_type, c.feat_extract_norm)
        assert fk is not None, f"no fairseq name for {k}"
        out[fk] = v.clone()
    return out


def pretrain_extras(kind: str) -> dict:
    if kind == "hubert":
        return {"final_proj.weight": torch.randn(8, 32), "final_proj.bias": torch.randn(8),
                "label_embs_concat": torch.randn(5, 8)}
    return {"quantizer.vars": torch.randn(1, 16, 8), "project_q.weight": torch.randn(8, 8),
            "final_proj.weight": torch.randn(8, 32)}


def fairseq_cfg(model, task_normalize=False) -> dict:
    return {"model": km.fairseq_cfg_from_hf(model.config),
            "task": {"_name": f"{model.config.model_type}_pretraining", "normalize": task_normalize}}


def assert_same(model, out_dir, normalize=False):
    """Same tensors (bit-identical) and same hidden states on a random waveform."""
    enc = load_encoder(str(out_dir))
    conv = enc.model.state_dict()
    for k, v in model.state_dict().items():
        assert k in conv, k
        assert torch.equal(conv[k], v), k
    wav = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    lens = torch.tensor([8000, 6000])
    ref = HFEncoder(model, name="ref").eval()
    ref.normalize_input = normalize
    assert enc.normalize_input == normalize
    with torch.no_grad():
        a, _ = ref(wav, lens)
        b, _ = enc(wav, lens)
    assert len(a) == len(b) == model.config.num_hidden_layers + 1
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "wavlm"])
def test_fairseq_layout_roundtrip(tmp_path, kind):
    model = tiny_model(kind)
    sd = {**fairseq_state(model), **pretrain_extras(kind)}
    src = tmp_path / "checkpoint_best.pt"
    torch.save({"cfg": fairseq_cfg(model, task_normalize=True), "model": sd, "optimizer_history": [],
                "extra_state": {"epoch": 3}}, src)
    rep = convert_checkpoint(src, tmp_path / "hf")
    assert rep.format == "fairseq" and rep.model_type == kind and rep.verified
    assert rep.unmapped == []
    assert set(rep.dropped) == set(pretrain_extras(kind))
    assert rep.mapped == len(model.state_dict())
    assert_same(model, tmp_path / "hf", normalize=True)
    card = json.loads((tmp_path / "hf" / "speechft_card.json").read_text())
    assert card["source_format"] == "fairseq" and card["converted_from"].endswith("checkpoint_best.pt")
    assert sorted(card["dropped_keys"]) == sorted(pretrain_extras(kind))


def test_key_names_match_fairseq_architecture():
    """Pinned names from fairseq's module structure, independent of the inverse map used above."""
    pairs = {
        ("feature_extractor.conv_layers.0.0.weight", "group"): "feature_extractor.conv_layers.0.conv.weight",
        ("feature_extractor.conv_layers.0.2.weight", "group"): "feature_extractor.conv_layers.0.layer_norm.weight",
        ("feature_extractor.conv_layers.3.2.1.bias", "layer"): "feature_extractor.conv_layers.3.layer_norm.bias",
        ("post_extract_proj.weight", "group"): "feature_projection.projection.weight",
        ("layer_norm.bias", "group"): "feature_projection.layer_norm.bias",
        ("mask_emb", "group"): "masked_spec_embed",
        ("encoder.pos_conv.0.weight_g", "group"): "encoder.pos_conv_embed.conv.weight_g",
        ("encoder.pos_conv.0.parametrizations.weight.original1", "group"): "encoder.pos_conv_embed.conv.weight_v",
        ("encoder.layers.11.self_attn.out_proj.bias", "group"): "encoder.layers.11.attention.out_proj.bias",
        ("encoder.layers.1.self_attn_layer_norm.weight", "group"): "encoder.layers.1.layer_norm.weight",
        ("encoder.layers.1.fc1.weight", "group"): "encoder.layers.1.feed_forward.intermediate_dense.weight",
        ("encoder.layers.1.fc2.bias", "group"): "encoder.layers.1.feed_forward.output_dense.bias",
        ("encoder.layers.1.final_layer_norm.bias", "group"): "encoder.layers.1.final_layer_norm.bias",
        ("encoder.layer_norm.weight", "group"): "encoder.layer_norm.weight",
    }
    for (fs, norm), hf in pairs.items():
        assert km.fairseq_to_hf_key(fs, "hubert", norm) == hf, fs
    # a group-norm CNN normalises its first layer only; a layer-norm CNN has no ".2.weight"
    assert km.fairseq_to_hf_key("feature_extractor.conv_layers.1.2.weight", "hubert", "group") is None
    assert km.fairseq_to_hf_key("feature_extractor.conv_layers.0.2.weight", "hubert", "layer") is None
    assert km.fairseq_to_hf_key("encoder.layers.0.self_attn.grep_a", "wavlm", "group") == \
        "encoder.layers.0.attention.gru_rel_pos_const"
    assert km.adapt_weight_norm("encoder.pos_conv_embed.conv.weight_g",
                                ["encoder.pos_conv_embed.conv.parametrizations.weight.original0"]) == \
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0"


def test_conv_layer_spec_parsing_without_eval():
    spec = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"
    assert km.parse_conv_layers(spec) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(ValueError, match="conv_feature_layers"):
        km.parse_conv_layers("__import__('os').system('true')")
    cfg = km.hf_config_from_fairseq("hubert", {"encoder_layers": 2, "conv_feature_layers": spec})
    assert cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2) and cfg.feat_extract_norm == "group"


def test_old_fairseq_args_namespace_needs_flag(tmp_path):
    model = tiny_model("hubert")
    args = argparse.Namespace(arch="hubert", normalize=False, **km.fairseq_cfg_from_hf(model.config))
    src = tmp_path / "old.pt"
    torch.save({"args": args, "model": fairseq_state(model)}, src)
    with pytest.raises(PermissionError, match="--allow-unsafe-pickle") as e:
        convert_checkpoint(src, tmp_path / "hf")
    assert "argparse.Namespace" in str(e.value) and "arbitrary code" in str(e.value)
    assert not (tmp_path / "hf").exists()
    rep = convert_checkpoint(src, tmp_path / "hf", allow_unsafe_pickle=True)
    assert rep.format == "fairseq" and rep.model_type == "hubert"
    assert_same(model, tmp_path / "hf")


def test_unsafe_flag_reads_objects_of_missing_packages(tmp_path, monkeypatch):
    """fairseq checkpoints hold fairseq Dictionary objects and omegaconf configs; neither package is
    installed here. Stand-ins pickled the way those classes are (plain object state) must be read."""
    mod = types.ModuleType("fakeseq")

    class Dictionary:
        def __init__(self):
            self.symbols = ["<s>", "a"]

    class AnyNode:  # omegaconf value node: state {"_val": value, ...}
        def __init__(self, val):
            self._val, self._metadata = val, {"flags": None}

    class DictConfig:  # omegaconf container: state {"_content": {key: node}, ...}
        def __init__(self, content):
            self._metadata, self._parent = {"object_type": dict}, None
            self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}

    for cls in (Dictionary, AnyNode, DictConfig):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    model = tiny_model("hubert")
    src = tmp_path / "hubert.pt"
    torch.save({"cfg": DictConfig(fairseq_cfg(model)), "model": fairseq_state(model),
                "task_state": {"dictionaries": [Dictionary()]}}, src)
    monkeypatch.delitem(sys.modules, mod.__name__)
    with pytest.raises(PermissionError, match="fakeseq.Dictionary"):
        convert_checkpoint(src, tmp_path / "hf")
    rep = convert_checkpoint(src, tmp_path / "hf", allow_unsafe_pickle=True)
    assert rep.model_type == "hubert" and "checkpoint cfg" in rep.config_source
    assert_same(model, tmp_path / "hf")


def test_s3prl_upstream_and_downstream(tmp_path):
    model = tiny_model("hubert")
    sd = {**fairseq_state(model), **pretrain_extras("hubert")}
    up = tmp_path / "hubert_converted.pt"
    cfg = fairseq_cfg(model)
    torch.save({"task_cfg": cfg["task"], "model_cfg": cfg["model"], "model_weight": sd,
                "dictionaries_symbols": [["a", "b"]]}, up)
    rep = convert_checkpoint(up, tmp_path / "up")
    assert rep.format == "s3prl-upstream" and rep.verified
    assert_same(model, tmp_path / "up")

    tuned = tiny_model("hubert", seed=7)  # "fine-tuned" weights differ from the upstream file's
    down = tmp_path / "states-1000.ckpt"
    state = {"Upstream": {"model." + k: v for k, v in {**fairseq_state(tuned), **pretrain_extras("hubert")}.items()},
             "Featurizer": {"weights": torch.zeros(3)}, "Downstream": {"linear.weight": torch.randn(4, 32)},
             "Optimizer": {"state": {}, "param_groups": []}, "Step": 1000, "Epoch": 2,
             "Config": {"downstream_expert": {"modelrc": {}}}}
    torch.save(state, down)
    with pytest.raises(ValueError, match="--config"):
        convert_checkpoint(down, tmp_path / "down")
    rep = convert_checkpoint(down, tmp_path / "down", config=str(up))
    assert rep.format == "s3prl-downstream" and rep.unmapped == []
    assert {"Featurizer", "Downstream", "model.final_proj.weight"} <= set(rep.dropped)
    assert_same(tuned, tmp_path / "down")
    # with Args.upstream_ckpt pointing at an existing file, no --config is needed
    torch.save({**state, "Args": {"upstream": "hubert", "upstream_ckpt": str(up)}}, down)
    rep = convert_checkpoint(down, tmp_path / "down2")
    assert rep.config_source == str(up)
    assert_same(tuned, tmp_path / "down2")
    # an HF directory works as --config too
    rep = convert_checkpoint(down, tmp_path / "down3", config=str(tmp_path / "up"))
    assert_same(tuned, tmp_path / "down3")


def test_speechft_release_both_variants(tmp_path):
    model = tiny_model("wav2vec2")
    cfg = fairseq_cfg(model, task_normalize=True)
    a = tmp_path / "a" / "merged_model.pt"
    a.parent.mkdir()
    torch.save({"task_cfg": cfg["task"], "model_cfg": cfg["model"],
                "model_weight": {**fairseq_state(model), **pretrain_extras("wav2vec2")}}, a)
    (a.parent / "config.yaml").write_text("finetune_model_paths: [x.ckpt]\nalpha: 0.25\nmodel_name: wav2vec2\n")
    rep = convert_checkpoint(a, tmp_path / "hf_a")
    assert rep.format == "speechft-release" and rep.model_type == "wav2vec2"
    card = json.loads((tmp_path / "hf_a" / "speechft_card.json").read_text())
    assert card["speechft_merge_config"]["alpha"] == 0.25
    assert_same(model, tmp_path / "hf_a", normalize=True)

    wavlm = tiny_model("wavlm")
    b = tmp_path / "b" / "merged_model.pt"
    b.parent.mkdir()
    flat = {k: v for k, v in km.fairseq_cfg_from_hf(wavlm.config).items() if k != "_name"}
    torch.save({"Config": {**flat, "normalize": False}, "model": fairseq_state(wavlm)}, b)
    rep = convert_checkpoint(b, tmp_path / "hf_b")
    assert rep.format == "speechft-release" and rep.model_type == "wavlm"
    assert_same(wavlm, tmp_path / "hf_b")


def test_finetuned_ctc_fairseq_checkpoint(tmp_path):
    model = tiny_model("wav2vec2")
    sd = {"w2v_encoder.w2v_model." + k: v for k, v in fairseq_state(model).items()}
    sd.update({"w2v_encoder.proj.weight": torch.randn(30, 32), "w2v_encoder.proj.bias": torch.randn(30)})
    cfg = fairseq_cfg(model)
    src = tmp_path / "ctc.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_args": cfg}, "task": {"normalize": False}},
                "model": sd}, src)
    rep = convert_checkpoint(src, tmp_path / "hf")
    assert set(rep.dropped) == {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"} and rep.unmapped == []
    assert_same(model, tmp_path / "hf")


def test_safetensors_and_hf_named_state_dicts(tmp_path, tiny_model_dir):
    from safetensors.torch import save_file

    model = tiny_model("hubert")
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in fairseq_state(model).items()}, str(st),
              metadata={"config": json.dumps(km.fairseq_cfg_from_hf(model.config))})
    rep = convert_checkpoint(st, tmp_path / "hf")
    assert rep.format == "safetensors"
    assert_same(model, tmp_path / "hf")
    # a transformers-named state dict of a model with a CTC head, architecture from an HF dir
    ref = load_encoder(str(tiny_model_dir)).model
    sd = {"hubert." + k: v for k, v in ref.state_dict().items()}
    sd["lm_head.weight"] = torch.randn(5, 32)
    torch.save(sd, tmp_path / "ctc_head.bin")
    rep = convert_checkpoint(tmp_path / "ctc_head.bin", tmp_path / "hf2", config=str(tiny_model_dir))
    assert rep.format == "state-dict" and "lm_head.weight" in rep.dropped
    assert_same(ref, tmp_path / "hf2", normalize=True)


def test_identity_projection_synthesised(tmp_path):
    """fairseq omits post_extract_proj when the CNN width equals the hidden size."""
    model = tiny_model("hubert")
    with torch.no_grad():
        model.feature_projection.projection.weight.copy_(torch.eye(32))
        model.feature_projection.projection.bias.zero_()
    sd = {k: v for k, v in fairseq_state(model).items() if not k.startswith("post_extract_proj")}
    torch.save({"cfg": fairseq_cfg(model), "model": sd}, tmp_path / "c.pt")
    rep = convert_checkpoint(tmp_path / "c.pt", tmp_path / "hf")
    assert set(rep.synthesized) == {"feature_projection.projection.weight", "feature_projection.projection.bias"}
    assert_same(model, tmp_path / "hf")


def test_unmapped_strict_and_mismatch(tmp_path):
    model = tiny_model("hubert")
    sd = {**fairseq_state(model), "encoder.extra_adapter.weight": torch.randn(3)}
    src = tmp_path / "c.pt"
    torch.save({"cfg": fairseq_cfg(model), "model": sd}, src)
    rep = convert_checkpoint(src, tmp_path / "hf")
    assert rep.unmapped == ["encoder.extra_adapter.weight"]
    with pytest.raises(ValueError, match="--strict"):
        convert_checkpoint(src, tmp_path / "hf_strict", strict=True)
    assert not (tmp_path / "hf_strict").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(src, tmp_path / "hf")
    bad = fairseq_cfg(model)
    bad["model"]["encoder_ffn_embed_dim"] = 48
    torch.save({"cfg": bad, "model": sd}, src)
    with pytest.raises(ValueError, match="fc1.weight has shape"):
        convert_checkpoint(src, tmp_path / "hf_bad")
    with pytest.raises(ValueError, match="not a s3prl-downstream"):
        convert_checkpoint(src, tmp_path / "hf_bad", fmt="s3prl-downstream")
    with pytest.raises(ValueError, match="did you mean 'fairseq'"):
        convert_checkpoint(src, tmp_path / "hf_bad", fmt="fairsek")


class _Payload:
    """Unpickling this object creates a marker file: stands in for a pickle that runs code on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": _Payload(marker)}, src)
    with pytest.raises(PermissionError, match="--allow-unsafe-pickle"):
        convert_checkpoint(src, tmp_path / "hf")
    assert not marker.exists()
    # the payload is real: full unpickling (the flag) does run it
    with pytest.raises(ValueError):
        convert_checkpoint(src, tmp_path / "hf", allow_unsafe_pickle=True)
    assert marker.exists()


def test_truncated_files_are_reported(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("hubert")
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in fairseq_state(model).items()}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"truncated or corrupt checkpoint file {st}"):
        convert_checkpoint(st, tmp_path / "hf", config=None)
    pt = tmp_path / "c.pt"
    torch.save({"cfg": fairseq_cfg(model), "model": fairseq_state(model)}, pt)
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt checkpoint file"):
        convert_checkpoint(pt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_load_encoder_refuses_truncated_model_dir(tmp_path, tiny_model_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_encoder(str(d))


def test_saved_encoder_keeps_mask_embedding(tmp_path):
    from speechft.models.io import save_encoder

    enc = HFEncoder(tiny_model("hubert"), name="t")  # zeroes mask_time_prob for inference
    save_encoder(enc, tmp_path / "m")
    again = load_encoder(str(tmp_path / "m"))
    assert torch.equal(again.model.masked_spec_embed, enc.model.masked_spec_embed)


def test_cli_convert(tmp_path):
    from typer.testing import CliRunner

    from speechft.cli import app

    model = tiny_model("hubert")
    src = tmp_path / "c.pt"
    torch.save({"cfg": fairseq_cfg(model), "model": {**fairseq_state(model), "encoder.odd": torch.zeros(1)}}, src)
    r = CliRunner().invoke(app, ["convert", str(src), "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    assert "detected format: fairseq" in r.output and "encoder.odd" in r.output
    r = CliRunner().invoke(app, ["convert", str(src), "--out", str(tmp_path / "hf2"), "--strict"])
    assert r.exit_code != 0 and "--strict" in r.output
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "missing.pt" in r.output
