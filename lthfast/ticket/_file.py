"""Ticket files: the safetensors format (8-byte little-endian header length, a
JSON header, then the raw bytes), written here without the safetensors package.

Each mask is a uint8 tensor ("U8", shape [ceil(numel / 8)]) named by its
parameter; ``__metadata__`` (string values only, as the format requires) holds
format, version, lthfast version, names, shapes, kept counts, sparsity, round,
the free-form meta dict (JSON) and a CRC-32 of the data. Loading parses JSON and
bytes only (nothing is unpickled) and checks everything against everything.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib

import torch

from lthfast._atomic import atomic_write

FORMAT = "lthfast.ticket"
VERSION = "1"
_MAX_HEADER = 256 << 20  # a header larger than this is not a ticket's


def write(path, names, shapes, packed, kept, round_, meta, lthfast_version, layerwise=False) -> None:
    """Atomically writes a ticket file (temp file in the same folder + os.replace)."""
    path = os.fspath(path)
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save the ticket to {path!r}: ticket.meta must hold JSON values "
                        f"only (str, numbers, bools, None, lists, dicts): {e}") from None
    blobs = [packed[n].detach().to("cpu").contiguous().numpy().tobytes() for n in names]
    data = b"".join(blobs)
    numel = sum(math.prod(shapes[n]) for n in names)
    total_kept = sum(kept[n] for n in names)
    metadata = {
        "format": FORMAT, "version": VERSION, "lthfast_version": str(lthfast_version),
        "round": str(int(round_)), "layerwise": "1" if layerwise else "0",
        "names": json.dumps(list(names)),
        "shapes": json.dumps({n: list(shapes[n]) for n in names}),
        "kept": json.dumps({n: int(kept[n]) for n in names}),
        "sparsity": repr(1.0 - total_kept / numel if numel else 0.0),
        "meta": meta_json,
        "crc32": str(zlib.crc32(data)),
    }
    header = {"__metadata__": metadata}
    offset = 0
    for n, blob in zip(names, blobs):
        header[n] = {"dtype": "U8", "shape": [len(blob)], "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)  # data starts 8-byte aligned, as safetensors writes it

    def write_to(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.write(data)

    atomic_write(path, write_to)


class _Bad(ValueError):
    pass


def read(path):
    """``(names, shapes, packed, kept, round, meta, layerwise)`` from a ticket file; ValueError
    naming the file and the problem when it is not a valid, consistent ticket."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ValueError(f"cannot read ticket file {path!r}: {e}") from None
    try:
        return _parse(blob)
    except _Bad as e:
        raise ValueError(f"{path!r} is not a valid lthfast ticket file: {e}") from None


def _json(text, what):
    try:
        return json.loads(text)
    except (ValueError, TypeError) as e:
        raise _Bad(f"metadata {what!r} is not valid JSON ({e})") from None


def _parse(blob: bytes):
    if len(blob) < 8:
        raise _Bad(f"it has {len(blob)} bytes, fewer than the 8-byte header length (truncated?)")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > min(_MAX_HEADER, len(blob) - 8):
        raise _Bad(f"its header length {hlen} runs past the end of the file ({len(blob)} bytes): "
                   "truncated, or not a safetensors file")
    try:
        header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Bad(f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _Bad("its header is not a JSON object")
    md = header.pop("__metadata__", None)
    if not isinstance(md, dict):
        raise _Bad("it has no lthfast ticket metadata (a safetensors file of something else?)")
    if md.get("format") != FORMAT:
        raise _Bad(f"its metadata format is {md.get('format')!r}, not {FORMAT!r}")
    if md.get("version") != VERSION:
        raise _Bad(f"ticket format version {md.get('version')!r} is not supported (this lthfast "
                   f"reads version {VERSION})")
    for key in ("names", "shapes", "kept", "round", "meta", "crc32", "sparsity"):
        if not isinstance(md.get(key), str):
            raise _Bad(f"metadata {key!r} is missing")
    names = _json(md["names"], "names")
    shapes = _json(md["shapes"], "shapes")
    kept = _json(md["kept"], "kept")
    meta = _json(md["meta"], "meta")
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        raise _Bad("metadata 'names' is not a list of distinct strings")
    if not isinstance(shapes, dict) or set(shapes) != set(names):
        raise _Bad("metadata 'shapes' does not list exactly the names")
    if not isinstance(kept, dict) or set(kept) != set(names):
        raise _Bad("metadata 'kept' does not list exactly the names")
    if set(header) != set(names):
        extra, missing = sorted(set(header) - set(names)), sorted(set(names) - set(header))
        raise _Bad(f"its tensors do not match metadata 'names' (not in names: {extra}, "
                   f"without a tensor: {missing})")
    if not isinstance(meta, dict):
        raise _Bad("metadata 'meta' is not a JSON object")
    try:
        round_ = int(md["round"])
        crc = int(md["crc32"])
        sparsity = float(md["sparsity"])
    except ValueError:
        raise _Bad("metadata 'round', 'crc32' or 'sparsity' is not a number") from None
    if round_ < 0:  # checked here so that the error names the file
        raise _Bad(f"metadata 'round' is {round_}, not a non-negative int")
    if md.get("layerwise", "0") not in ("0", "1"):  # absent in files written before it existed
        raise _Bad(f"metadata 'layerwise' is {md.get('layerwise')!r}, not '0' or '1'")
    data = memoryview(blob)[8 + hlen:]
    if zlib.crc32(data) != crc:
        raise _Bad("its data fails the CRC-32 check (corrupted or truncated)")
    out = _tensors(names, shapes, kept, header, data, round_, sparsity, meta)
    return out + (md.get("layerwise") == "1",)


def _tensors(names, shapes, kept, header, data, round_, sparsity, meta):
    from lthfast import bitmask
    packed, shape_of, kept_of, end = {}, {}, {}, 0
    for n in names:
        shape, entry = shapes[n], header[n]
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise _Bad(f"shape of {n!r} is not a list of sizes: {shape!r}")
        numel = math.prod(shape)
        nbytes = bitmask.packed_nbytes(numel)
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or entry.get("dtype") != "U8" or entry.get("shape") != [nbytes]
                or not isinstance(offsets, list) or len(offsets) != 2):
            raise _Bad(f"tensor {n!r} is not uint8 of shape [{nbytes}] (its metadata shape "
                       f"{shape} needs {nbytes} bytes): {entry!r}")
        b, e = offsets
        if not (isinstance(b, int) and isinstance(e, int)) or b != end or e - b != nbytes:
            raise _Bad(f"tensor {n!r} has data offsets {offsets}, expected [{end}, {end + nbytes}]")
        end = e
        t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.uint8) if nbytes else \
            torch.empty(0, dtype=torch.uint8)
        if numel % 8 and int(t[-1]) >> (numel % 8):
            raise _Bad(f"tensor {n!r} has bits set past its {numel} entries")
        count = bitmask.count_bits(t)
        if kept[n] != count:
            raise _Bad(f"metadata says {n!r} keeps {kept[n]} entries but its mask keeps {count}")
        packed[n], shape_of[n], kept_of[n] = t, tuple(shape), count
    if end != len(data):
        raise _Bad(f"it has {len(data) - end} bytes of data past the last tensor")
    numel = sum(math.prod(s) for s in shape_of.values())
    actual = 1.0 - sum(kept_of.values()) / numel if numel else 0.0
    if not math.isclose(actual, sparsity, rel_tol=0, abs_tol=1e-9):
        raise _Bad(f"metadata sparsity {sparsity} disagrees with the masks ({actual})")
    return names, shape_of, packed, kept_of, round_, meta
