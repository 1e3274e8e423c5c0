"""Streaming safetensors IO: the writer's files load everywhere, sharded inputs, bad files, peak memory."""
import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import PROJECT, make_tiny_encoder
from speechft.merge import merge_models
from speechft.merge.stream import SafetensorsDir, StreamingSafetensorsWriter, TensorSpec, build_header
from speechft.models.io import save_encoder


def spec_of(key, t):
    from speechft.merge.stream import TORCH_TO_ST

    return TensorSpec(key, TORCH_TO_ST[t.dtype], tuple(t.shape))


def every_dtype() -> dict:
    """One small tensor of each kind a checkpoint may hold, a scalar and an empty one included."""
    return {
        "a.weight": torch.randn(3, 5),
        "b.half": torch.randn(7).half(),
        "c.bf16": torch.randn(2, 2, 2).bfloat16(),
        "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.flag": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(3.5, dtype=torch.float64),
        "g.empty": torch.zeros(0, 4),
    }


def test_writer_output_loads_with_safetensors_and_matches_reference(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "w.safetensors"
    with StreamingSafetensorsWriter(path, [spec_of(k, t) for k, t in tensors.items()], {"format": "pt"}) as w:
        for k, t in tensors.items():
            w.write(k, t)
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_len % 8 == 0  # aligned like the reference writer
    from speechft.merge.stream import _read_header  # our own header reader agrees

    assert {k: s.shape for k, s in _read_header(path).items()} == {k: tuple(t.shape) for k, t in tensors.items()}


def test_mapped_tensors_equal_read_ones_for_every_dtype(tmp_path):
    tensors = {**every_dtype(), "h.big": torch.randn(300, 1000)}  # h.big spans pages, starts off a page boundary
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text("{}")
    src = SafetensorsDir(tmp_path / "m")
    assert src.offsets["h.big"] % 4096
    for k, t in tensors.items():
        got = src.map(k)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), k
        assert torch.equal(got, src.get(k)), k
    merged = merge_models(str(tmp_path / "m"), [str(tmp_path / "m")], tmp_path / "o", alpha=0.3, progress=False)
    got = load_file(str(merged / "model.safetensors"))
    assert got.keys() == tensors.keys() and all(torch.equal(v, tensors[k]) for k, v in got.items())


def test_merge_leaves_torch_threads_as_it_found_them(tmp_path, tiny_model_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        merge_models(str(tiny_model_dir), [str(tiny_model_dir)], tmp_path / "o", alpha=0.5, progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_writer_refuses_wrong_order_shape_and_missing(tmp_path):
    specs = [TensorSpec("x", "F32", (2,)), TensorSpec("y", "F32", (3,))]
    with pytest.raises(ValueError, match="expected tensor 'x' next, got 'y'"):
        with StreamingSafetensorsWriter(tmp_path / "a", specs) as w:
            w.write("y", torch.zeros(3))
    with pytest.raises(ValueError, match=r"'x' is torch.float32 \(3,\), header says F32 \(2,\)"):
        with StreamingSafetensorsWriter(tmp_path / "b", specs) as w:
            w.write("x", torch.zeros(3))
    with pytest.raises(ValueError, match="1 tensors were never written"):
        with StreamingSafetensorsWriter(tmp_path / "c", specs) as w:
            w.write("x", torch.zeros(2))
    with pytest.raises(ValueError, match="duplicate tensor name"):
        build_header([TensorSpec("x", "F32", (1,))] * 2)


def test_writer_reports_a_failed_background_sync(tmp_path, monkeypatch):
    """The kernel reports a write-back error to one sync call only: the writer's close must raise it."""
    import errno
    import os
    import time

    from speechft.merge import stream

    def failing_sync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(stream, "SYNC_EVERY_BYTES", 1)
    monkeypatch.setattr(os, "fdatasync", failing_sync, raising=False)
    specs = [TensorSpec("x", "F32", (4,)), TensorSpec("y", "F32", (4,))]
    with pytest.raises(OSError, match="w.safetensors: writing to disk failed"):
        with StreamingSafetensorsWriter(tmp_path / "w.safetensors", specs) as w:
            w.write("x", torch.zeros(4))
            deadline = time.monotonic() + 10
            while w._sync.error is None and time.monotonic() < deadline:  # the thread's sync has run
                time.sleep(0.01)
            w.write("y", torch.ones(4))


def test_sharded_input_gives_the_same_merge(tmp_path):
    m0, m1 = make_tiny_encoder(seed=0), make_tiny_encoder(seed=1)
    save_encoder(m0, tmp_path / "m0")
    save_encoder(m1, tmp_path / "m1")
    (tmp_path / "m1s").mkdir()
    m1.model.save_pretrained(tmp_path / "m1s", max_shard_size="40KB")
    assert (tmp_path / "m1s" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "m1s").glob("model-*.safetensors"))) > 2
    a = merge_models(str(tmp_path / "m0"), [str(tmp_path / "m1")], tmp_path / "a", alpha=0.3, progress=False)
    b = merge_models(str(tmp_path / "m0"), [str(tmp_path / "m1s")], tmp_path / "b", alpha=0.3, progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_input_files_are_named(tmp_path, tiny_model_dir):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, d)
    good = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(good[:-100])
    with pytest.raises(ValueError, match=r"broken/model.safetensors: truncated or corrupt checkpoint file"):
        SafetensorsDir(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match=r"broken/model.safetensors: not a readable safetensors file"):
        SafetensorsDir(d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no model.safetensors.*pytorch_model.bin"):
        SafetensorsDir(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "missing.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard missing.safetensors \\(holding 'x'\\) does not exist"):
        SafetensorsDir(d)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        merge_models(str(tmp_path / "nope"), [str(tiny_model_dir)], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_file_truncated_after_opening_is_named_when_read(tmp_path, tiny_model_dir):
    import shutil

    d = tmp_path / "shrinks"
    shutil.copytree(tiny_model_dir, d)
    src = SafetensorsDir(d)  # header checked while the file was whole
    last = max(src.offsets, key=src.offsets.get)
    assert torch.equal(src.get(last), load_file(str(d / "model.safetensors"))[last])
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(src.offsets[last] + 1)
    for read in (src.get, src.map):  # mapped: refused before any page past the end is touched
        with pytest.raises(ValueError, match=rf"shrinks/model.safetensors: cannot read tensor '{last}' \(truncated"):
            read(last)


@pytest.mark.slow
def test_peak_rss_of_streaming_merge_stays_below_one_model(tmp_path):
    """~20 M parameters: peak RSS above an interpreter with the same imports, over one model's size."""
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    import bench_merge

    inp = bench_merge.make_inputs(tmp_path, "small", n_ft=2)
    assert inp["params"] > 19e6
    model_mib = inp["model_bytes"] / 2**20
    base = bench_merge.run_child("")["maxrss_mib"]
    ratios = {}
    for n in (1, 2):
        body = bench_merge.stream_body(inp["pretrained"], inp["finetuned"][:n], tmp_path / f"out{n}")
        ratios[n] = (bench_merge.run_child(body)["maxrss_mib"] - base) / model_mib
    print(f"\npeak RSS / model ({model_mib:.0f} MiB): " + ", ".join(f"{n} fine-tuned {r:.2f}" for n, r in ratios.items()))
    assert all(r < 1.2 for r in ratios.values()), ratios
    assert (tmp_path / "out2" / "model.safetensors").stat().st_size == pytest.approx(inp["model_bytes"], rel=1e-3)
