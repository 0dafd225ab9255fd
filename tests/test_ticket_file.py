"""Ticket files: safetensors round trip, size, atomic write, and clear errors for
truncated, corrupted, foreign and inconsistent files (nothing is unpickled)."""
import json
import os
import struct

import pytest
import torch
from torch import nn

import lthfast
from _ticket_files import reseal
from lthfast import Ticket

pytestmark = pytest.mark.skipif(not lthfast._ops.available(), reason="lthfast._C not built")


def ticket():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(13, 7))
    t = Ticket.from_model(model, 0.7).prune(model, 0.2)
    t.meta.update({"model": "toy", "rewind": 0, "ap": [0.5, 0.25]})
    return t


def _write_raw(path, header, data=b""):
    raw = json.dumps(reseal(header)).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def _split(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def test_roundtrip(tmp_path):
    t = ticket()
    path = tmp_path / "t.safetensors"
    t.save(path)
    u = Ticket.load(path)
    assert u == t and u.round == 2 and u.meta == t.meta and u.names() == t.names()
    assert u.kept_by_name() == t.kept_by_name() and u.shapes == t.shapes
    assert all(torch.equal(u[n], t[n]) for n in t)
    header, data = _split(path)
    md = header["__metadata__"]
    assert md["format"] == "lthfast.ticket" and md["lthfast_version"] == lthfast.__version__
    assert len(data) == sum((t.numel(n) + 7) // 8 for n in t)  # 1 bit per weight
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no temp file left behind
    t.save(str(path))  # overwrite in place
    assert Ticket.load(str(path)) == t


def test_readable_by_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    t = ticket()
    t.save(tmp_path / "t.safetensors")
    tensors = st.load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(tensors[n], t.packed(n)) for n in t)


def test_empty_and_edge_masks(tmp_path):
    t = Ticket({"e": torch.zeros(0, 3, dtype=torch.bool), "one": torch.ones(1, dtype=torch.bool),
                "none": torch.zeros(9, dtype=torch.bool)})
    t.save(tmp_path / "e.st")
    assert Ticket.load(tmp_path / "e.st") == t


@pytest.mark.parametrize("cut", [0, 3, 8, 20, -1, -5])
def test_truncated(tmp_path, cut):
    path = tmp_path / "t.safetensors"
    ticket().save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[:cut] if cut >= 0 else blob[:len(blob) + cut])
    with pytest.raises(ValueError, match="t.safetensors.*(truncated|CRC|header)"):
        Ticket.load(path)


def test_corrupted_data_and_header(tmp_path):
    path = tmp_path / "t.safetensors"
    t = ticket()
    t.save(path)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x10
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="CRC"):
        Ticket.load(path)
    t.save(path)
    blob = bytearray(path.read_bytes())
    blob[12] = 0xFF  # inside the JSON header
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="not valid JSON"):
        Ticket.load(path)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a valid lthfast ticket"):
        Ticket.load(path)


def test_not_a_ticket(tmp_path):
    path = tmp_path / "x.safetensors"
    _write_raw(path, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(ValueError, match="x.safetensors.*no lthfast ticket metadata"):
        Ticket.load(path)
    _write_raw(path, {"__metadata__": {"format": "pt"}})
    with pytest.raises(ValueError, match="format is 'pt'"):
        Ticket.load(path)
    pt = tmp_path / "m.pt"
    torch.save({"a": torch.ones(2)}, pt)  # a pickle: rejected, never unpickled
    with pytest.raises(ValueError, match="m.pt"):
        Ticket.load(pt)
    with pytest.raises(ValueError, match="cannot read"):
        Ticket.load(tmp_path / "missing.safetensors")


def _rewrite(path, edit):
    header, data = _split(path)
    out = edit(header, data)
    data = out if isinstance(out, bytes) else data
    _write_raw(path, header, data)


@pytest.mark.parametrize("edit,match", [
    (lambda h, d: h["__metadata__"].update(kept=json.dumps({**json.loads(h["__metadata__"]["kept"]), "0.weight": 1})),
     "keeps 1 entries"),
    (lambda h, d: h["__metadata__"].update(shapes=json.dumps({**json.loads(h["__metadata__"]["shapes"]), "0.weight": [16, 3, 3, 4]})),
     "needs"),
    (lambda h, d: h["__metadata__"].update(names=json.dumps(["0.weight"])), "shapes' does not list"),
    (lambda h, d: h["__metadata__"].update(sparsity="0.5"), "sparsity"),
    (lambda h, d: h["__metadata__"].update(version="99"), "version"),
    (lambda h, d: h["__metadata__"].pop("crc32"), "'crc32' is missing"),
    (lambda h, d: h["__metadata__"].update(meta="[1, 2"), "'meta' is not valid JSON"),
    (lambda h, d: h.pop("3.weight"), "without a tensor"),
    (lambda h, d: h["0.weight"].update(dtype="F32"), "not uint8"),
])
def test_metadata_disagreeing_with_data(tmp_path, edit, match):
    path = tmp_path / "t.safetensors"
    ticket().save(path)
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=match):
        Ticket.load(path)


def test_trailing_bits_and_extra_data(tmp_path):
    import zlib
    path = tmp_path / "t.safetensors"
    Ticket({"a": torch.ones(5, dtype=torch.bool)}).save(path)

    def set_trailing(h, d):
        d = bytes([0xFF])
        h["__metadata__"]["crc32"] = str(zlib.crc32(d))
        return d
    _rewrite(path, set_trailing)
    with pytest.raises(ValueError, match="bits set past"):
        Ticket.load(path)

    def extra(h, d):
        d = bytes([0x1F, 0])
        h["__metadata__"]["crc32"] = str(zlib.crc32(d))
        return d
    _rewrite(path, extra)
    with pytest.raises(ValueError, match="past the last tensor"):
        Ticket.load(path)


def test_failed_save_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    t = ticket()
    t.save(path)
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        Ticket({"a": torch.ones(3, dtype=torch.bool)}).save(path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["t.safetensors"]


def test_meta_must_be_json(tmp_path):
    t = ticket()
    t.meta["bad"] = object()
    with pytest.raises(TypeError, match="JSON"):
        t.save(tmp_path / "t.safetensors")
    assert os.listdir(tmp_path) == []
