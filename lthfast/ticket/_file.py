"""Ticket files: the safetensors format (8-byte little-endian header length, a
JSON header, then the raw bytes), written here without the safetensors package.

Each mask is a uint8 tensor ("U8", shape [ceil(numel / 8)]) named by its
parameter; ``__metadata__`` (string values only, as the format requires) holds
format, version, lthfast version, names, shapes, kept counts, sparsity, round,
the free-form meta dict (JSON), a CRC-32 of the data and one of the header. Loading
parses JSON and bytes only (nothing is unpickled) and checks everything against everything.
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


def _lthfast_version() -> str:
    from lthfast._version import __version__ as v
    return v


def _path_arg(path) -> str:
    """os.fspath(path), with an error that names the argument (as every Ticket argument's does)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}") from None


def write(path, names, shapes, packed, kept, round_, meta, lthfast_version, layerwise=False) -> None:
    """Atomically writes a ticket file (temp file in the same folder + os.replace)."""
    path = _path_arg(path)
    if "__metadata__" in names:  # the safetensors header keeps that key for the metadata
        raise ValueError(f"cannot save the ticket to {path!r}: a mask is named '__metadata__', "
                         "the name safetensors reserves for the file's metadata; rename it")
    try:
        meta_json = json.dumps(meta)  # first: it refuses circular references
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot save the ticket to {path!r}: ticket.meta must hold JSON values "
                        f"only (str, numbers, bools, None, lists, dicts): {e}") from None
    bad_key = _non_str_key(meta)
    if bad_key is not None:  # json.dumps turned it into a string: a lossy round trip
        raise TypeError(f"cannot save the ticket to {path!r}: ticket.meta has the key {bad_key!r} "
                        f"({type(bad_key).__name__}); JSON objects have string keys only")
    if os.path.isdir(path) or path.endswith(("/", os.sep)) or not os.path.basename(path):
        raise IsADirectoryError(f"cannot save the ticket to {path!r}: it is a directory; give a "
                                "file path (e.g. ticket.safetensors)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save the ticket to {path!r}: directory {folder!r} does "
                                "not exist")
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
    metadata["header_crc32"] = str(_header_crc(header))
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)  # data starts 8-byte aligned, as safetensors writes it

    def write_to(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.write(data)

    atomic_write(path, write_to)


def _header_crc(header: dict) -> int:
    """CRC-32 of the header (metadata and tensor entries) as canonical JSON, without the
    header_crc32 entry itself: a flipped digit in 'round' or 'meta' is valid JSON too, and
    the data's CRC does not cover it."""
    md = {k: v for k, v in header["__metadata__"].items() if k != "header_crc32"}
    canon = json.dumps({**header, "__metadata__": md}, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=True)
    return zlib.crc32(canon.encode("ascii"))


def _non_str_key(obj):
    """The first dict key (at any depth of lists / dicts) that is not a str, or None."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, str):
                    return k
                stack.append(v)
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return None


class _Bad(ValueError):
    pass


def read(path):
    """``(names, shapes, packed, kept, round, meta, layerwise)`` from a ticket file; ValueError
    naming the file and the problem when it is not a valid, consistent ticket."""
    path = _path_arg(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            # the header length is checked before the rest is read: a multi-GB file that is
            # not a ticket (a checkpoint given by mistake) is refused without reading it all
            if len(head) == 8 and _header_length(head, size) is not None:
                blob = head + f.read()
            else:
                blob = head
    except OSError as e:
        raise ValueError(f"cannot read ticket file {path!r}: {e}") from None
    try:
        return _parse(blob, size)
    except _Bad as e:
        raise ValueError(f"{path!r} is not a valid lthfast ticket file: {e}") from None


def _header_length(head: bytes, size: int):
    """The header length the first 8 bytes give, or None when it does not fit the file."""
    (hlen,) = struct.unpack("<Q", head)
    return hlen if hlen <= min(_MAX_HEADER, size - 8) else None


def _what_it_is(head: bytes) -> str:
    """A guess at what a file that is not a safetensors file is, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save writes those: a checkpoint or state dict?)"
    if head[:1] == b"\x80":
        return "a Python pickle (torch.save with the legacy format?)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON text file"
    return "not a safetensors file"


def _json(text, what):
    try:
        return json.loads(text)
    except (ValueError, TypeError) as e:
        raise _Bad(f"metadata {what!r} is not valid JSON ({e})") from None


def _parse(blob: bytes, size: int | None = None):
    size = len(blob) if size is None else size
    if size < 8:
        raise _Bad(f"it has {size} bytes, fewer than the 8-byte header length (truncated?)")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if _header_length(blob[:8], size) is None:
        if hlen > _MAX_HEADER:
            raise _Bad(f"it is {_what_it_is(blob[:8])}: its first 8 bytes {bytes(blob[:8])!r} "
                       f"give a header length of {hlen} bytes")
        raise _Bad(f"its header length {hlen} runs past the end of the file ({size} bytes): "
                   "truncated, or not a safetensors file")
    try:
        header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Bad(f"its header is not valid JSON ({e})") from None
    except RecursionError:  # json nests deeper than Python's recursion limit
        raise _Bad("its header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise _Bad("its header is not a JSON object")
    md = header.get("__metadata__")
    if not isinstance(md, dict):
        raise _Bad("it has no lthfast ticket metadata (a safetensors file of something else?)")
    if md.get("format") != FORMAT:
        raise _Bad(f"its metadata format is {md.get('format')!r}, not {FORMAT!r}")
    if md.get("version") != VERSION:
        version = md.get("version")
        writer = md.get("lthfast_version")
        by = f", written by lthfast {writer}" if isinstance(writer, str) else ""
        if isinstance(version, str) and version.isdigit() and int(version) > int(VERSION):
            raise _Bad(f"its ticket format version is {version}{by}; this lthfast (version "
                       f"{_lthfast_version()}) reads format version {VERSION} only: "
                       "upgrade lthfast")
        raise _Bad(f"its ticket format version is {version!r} ({type(version).__name__}){by}; "
                   f"this lthfast reads format version {VERSION!r} (a str) only")
    if "header_crc32" in md:  # absent in files written before it existed
        if not (isinstance(md["header_crc32"], str) and md["header_crc32"].isdigit()
                and int(md["header_crc32"]) == _header_crc(header)):
            raise _Bad("its header fails the CRC-32 check (corrupted metadata)")
    del header["__metadata__"]
    for key in ("names", "shapes", "kept", "round", "meta", "crc32", "sparsity"):
        if key not in md:
            raise _Bad(f"metadata {key!r} is missing")
        if not isinstance(md[key], str):  # safetensors metadata values are strings
            raise _Bad(f"metadata {key!r} is {md[key]!r}, not a string")
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
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise _Bad(f"shape of {n!r} is not a list of sizes: {shape!r}")
        numel = math.prod(shape)
        nbytes = bitmask.packed_nbytes(numel)
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or entry.get("dtype") != "U8" or entry.get("shape") != [nbytes]
                or not isinstance(offsets, list) or len(offsets) != 2):
            raise _Bad(f"tensor {n!r} is not uint8 of shape [{nbytes}] (its metadata shape "
                       f"{shape} needs {nbytes} bytes): {entry!r}")
        b, e = offsets
        if not (type(b) is int and type(e) is int) or b != end or e - b != nbytes:
            raise _Bad(f"tensor {n!r} has data offsets {offsets}, expected [{end}, {end + nbytes}]")
        end = e
        t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.uint8) if nbytes else \
            torch.empty(0, dtype=torch.uint8)
        if numel % 8 and int(t[-1]) >> (numel % 8):
            raise _Bad(f"tensor {n!r} has bits set past its {numel} entries")
        count = bitmask.count_bits(t)
        if type(kept[n]) is not int or kept[n] != count:
            raise _Bad(f"metadata says {n!r} keeps {kept[n]} entries but its mask keeps {count}")
        packed[n], shape_of[n], kept_of[n] = t, tuple(shape), count
    if end != len(data):
        raise _Bad(f"it has {len(data) - end} bytes of data past the last tensor")
    numel = sum(math.prod(s) for s in shape_of.values())
    actual = 1.0 - sum(kept_of.values()) / numel if numel else 0.0
    if not math.isclose(actual, sparsity, rel_tol=0, abs_tol=1e-9):
        raise _Bad(f"metadata sparsity {sparsity} disagrees with the masks ({actual})")
    return names, shape_of, packed, kept_of, round_, meta
