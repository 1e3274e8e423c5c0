"""Core contracts: manifest rows, audio IO, collate, encoder load/save, heads, vocab, metrics."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder, sine
from speechft.data import AudioDataset, ManifestError, Utterance, collate, load_audio, read_manifest, write_audio, write_manifest
from speechft.metrics import accuracy, error_rate
from speechft.models.heads import CTCHead, PoolClassifier, SlotsClassifier
from speechft.models.io import load_encoder, save_encoder
from speechft.tasks import get_task
from speechft.vocab import Vocab


def test_manifest_roundtrip_relative_paths(tmp_path):
    write_audio(tmp_path / "a" / "x.wav", sine(0.5))
    rows = [Utterance(id="x", audio=str(tmp_path / "a" / "x.wav"), text="hi there", duration=0.5)]
    m = write_manifest(tmp_path / "m.jsonl", rows)
    assert json.loads(m.read_text())["audio"] == "a/x.wav"
    back = read_manifest(m)
    assert back[0].audio == str((tmp_path / "a" / "x.wav").resolve()) and back[0].text == "hi there"


def test_manifest_errors_name_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": "a", "audio": "a.wav"}\nnot json\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(p)
    p.write_text('{"id": "a", "audio": "a.wav"}\n{"id": "a", "audio": "b.wav"}\n')
    with pytest.raises(ManifestError, match="duplicate id 'a'"):
        read_manifest(p)


def test_audio_resample_and_mono(tmp_path):
    import soundfile as sf

    st = np.stack([sine(1.0, sr=8000), sine(1.0, sr=8000)], 1)
    sf.write(tmp_path / "s.wav", st, 8000)
    wav = load_audio(tmp_path / "s.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1 and abs(wav.shape[0] - 16000) <= 2


def test_collate_contract(tmp_path):
    for i, s in enumerate([0.3, 0.5]):
        write_audio(tmp_path / f"{i}.wav", sine(s))
    rows = [Utterance(id=str(i), audio=str(tmp_path / f"{i}.wav")) for i in range(2)]
    b = collate([AudioDataset(rows)[i] for i in range(2)])
    assert b["wav"].shape == (2, 8000) and b["wav_lens"].tolist() == [4800, 8000]
    assert b["attention_mask"][0, 4800:].sum() == 0 and b["attention_mask"][0, :4800].all()


def test_encoder_save_load_plain_transformers(tmp_path):
    from transformers import AutoModel

    enc = make_tiny_encoder()
    save_encoder(enc, tmp_path / "m", card={"recipe": "none"})
    plain = AutoModel.from_pretrained(tmp_path / "m")
    for k, v in enc.model.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    back = load_encoder(str(tmp_path / "m"))
    x = torch.from_numpy(sine(0.5))[None]
    states, flen = back(x, torch.tensor([x.shape[1]]))
    assert len(states) == 3 and states[0].shape[-1] == 32 and int(flen[0]) == states[0].shape[1]
    assert back.normalize_input
    # a saved model folder is shareable: transformers leaves model.safetensors 0600, the save fixes that
    from speechft.utils.io import umask

    mask = umask()
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask and set(modes.values()) == {0o666 & ~mask}, modes


def test_freeze_feature_extractor():
    enc = make_tiny_encoder()
    enc.freeze_feature_extractor(True)
    frozen = list(enc.feature_extractor_parameters())
    assert frozen and all(not p.requires_grad for p in frozen)
    assert any(p.requires_grad for p in enc.model.encoder.parameters())


def test_heads_shapes_and_losses():
    states = [torch.randn(2, 10, 8) for _ in range(3)]
    fl = torch.tensor([10, 7])
    ctc = CTCHead(8, 6, num_states=3, layer_sum=True, hidden=4, layers=1, proj=5)
    lg = ctc(states, fl)
    assert lg.shape == (2, 10, 6)
    assert torch.isfinite(ctc.loss(lg, fl, [[2, 3], [4]]))
    pred = ctc.predict(lg, fl)
    assert len(pred) == 2 and all(0 not in p for p in pred)
    cls = PoolClassifier(8, 4, num_states=3, layer_sum=True)
    assert cls(states, fl).shape == (2, 4)
    sl = SlotsClassifier(8, [3, 2])
    out = sl(states, fl)
    assert [o.shape[1] for o in out] == [3, 2] and len(sl.predict(out, fl)[0]) == 2


def test_ctc_greedy_decoding_collapses_runs_then_drops_blanks():
    frames = [[1, 1, 0, 1, 2, 2, 0, 0, 3, 3], [0, 0, 4, 4, 4, 0, 5, 9, 9, 9]]  # argmax per frame
    logits = torch.nn.functional.one_hot(torch.tensor(frames), 10).float()
    got = CTCHead(8, 10).predict(logits, torch.tensor([10, 7]))  # the second row ends after frame 7
    assert got == [[1, 1, 2, 3], [4, 5]]
    assert CTCHead(8, 10).predict(logits, torch.tensor([0, 2])) == [[], []]


def test_vocab_ctc_and_slots():
    t = get_task("lite-asr")
    rows = [Utterance(id="a", audio="/x", text="ab c"), Utterance(id="b", audio="/y", text="ca")]
    v = Vocab.build(t, rows)
    ids = v.encode(t, rows[0])
    assert v.decode_ctc(ids, t) == "ab c" and v.symbols[0] == "<blank>"
    ic = get_task("lite-ic")
    rows = [Utterance(id="a", audio="/x", label="on|lights|kitchen"), Utterance(id="b", audio="/y", label="off|music|bedroom")]
    v = Vocab.build(ic, rows)
    assert v.slot_sizes() == [2, 2, 2] and v.encode(ic, rows[1]) == [0, 1, 0]


def test_metrics():
    assert error_rate("per", ["a b c"], ["a b"]) == pytest.approx(1 / 3)
    assert error_rate("cer", ["abcd"], ["abce"]) == pytest.approx(0.25)
    assert accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


def test_unknown_task_did_you_mean():
    with pytest.raises(KeyError, match="did you mean lite-pr"):
        get_task("lite-prr")
