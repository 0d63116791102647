"""PyTorch `.pth` files read and written with numpy and the standard library (no torch).

Formats (as torch/serialization.py writes them):

* zip (`torch.save` since 1.6): `<name>/data.pkl` is a pickle whose tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and whose storages
  are persistent ids `('storage', torch.FloatStorage, key, location, numel)`; the raw bytes
  of storage `key` are the uncompressed member `<name>/data/<key>`, in the order of
  `<name>/byteorder` (little when absent).
* legacy (`_use_new_zipfile_serialization=False`, and every storage nested in an NVIDIA
  network pickle): five pickles in a row -- the magic number 0x1950a86a20f9469cfc6c, the
  protocol version 1001, a sys_info dict, the object (persistent ids
  `('storage', type, key, location, numel, view_metadata)`), the sorted storage keys -- then
  for each key an int64 element count and the raw little-endian bytes.

Tensors come back as numpy arrays that own their memory (or whose base is a private buffer
read from the file), never views into a file or mmap; strides and offsets are honoured and
checked against the storage's size. bfloat16 has no numpy dtype: it is returned as float32
(exact: a bfloat16 is the top half of a float32).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np

from gandance_jax.interop.safe_pickle import (STDLIB_GLOBALS, FormatError, InteropError, NoBuild,
                                              allow_list,
                                              RestrictedUnpickler, UnsafePickleError)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
# First bytes of a pickle: PROTO (protocol 2+), or a protocol 0/1 opcode that can start one.
PICKLE_STARTS = b"\x80(cdl}]KIJNSVX"
_STORAGE_ALIGNMENT = 64  # as torch's writer: lets torch.load(mmap=True) map the records

# torch storage class -> element dtype (little-endian); 'bfloat16' is read as uint16 bits.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "UntypedStorage": "u1",
}


@dataclasses.dataclass(frozen=True)
class StorageType(NoBuild):
  """What a pickled `torch.<Name>Storage` global resolves to: a name, never callable."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(_STORAGE_DTYPES[self.name])

  @property
  def is_bfloat16(self) -> bool:
    return self.name == "BFloat16Storage"


class Storage(NoBuild):
  """A torch storage: its element type and, once read, a private 1-D array of elements."""

  def __init__(self, storage_type: StorageType, key: str, numel: int):
    self.type, self.key, self.numel = storage_type, key, int(numel)
    self.data: np.ndarray | None = None
    self.users = 0  # tensors built on it (a sole user covering it all may keep the buffer)


@dataclasses.dataclass
class TensorRef(NoBuild):
  """A tensor as pickled: (storage, offset, size, stride), materialised by `to_numpy`."""
  storage: Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def to_numpy(self, source: str) -> np.ndarray:
    """The tensor as a C-contiguous numpy array (see the module doc for ownership)."""
    st = self.storage
    if st.data is None:
      raise FormatError(f"{source}: storage {st.key!r} has no data")
    data = st.data
    size, stride, offset = self.size, self.stride, self.offset
    numel = math.prod(size)
    if numel == 0:
      out = np.zeros(size, data.dtype)
    else:
      last = offset + sum((n - 1) * s for n, s in zip(size, stride))
      if offset < 0 or min(stride, default=0) < 0 or last >= data.size:
        raise FormatError(f"{source}: a tensor of size {size}, stride {stride}, offset "
                          f"{offset} reaches element {last} of storage {st.key!r}, which "
                          f"has {data.size}")
      if _is_contiguous(size, stride):
        out = data[offset:offset + numel].reshape(size)
        if st.users == 1 and offset == 0 and numel == data.size:
          st.users = -1  # handed out: a second call (a memoised tensor) gets a copy
        else:
          out = out.copy()  # never alias another tensor's storage
      else:
        item = data.dtype.itemsize
        out = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(s * item for s in stride),
            writeable=False).copy()
    if not out.dtype.isnative:
      out = out.astype(out.dtype.newbyteorder("="))
    if st.type.is_bfloat16:
      out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
  expected = 1
  for n, s in zip(reversed(size), reversed(stride)):
    if n != 1 and s != expected:
      return False
    expected *= n
  return True


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
    raise FormatError(f"tensor {what} must be a tuple of ints, got {str(value)[:80]}")
  return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any,
                    *unused: Any) -> TensorRef:
  """Replacement of torch._utils._rebuild_tensor(_v2): records, checks, builds nothing."""
  if not isinstance(storage, Storage):
    raise FormatError(f"tensor storage must be a torch storage, got {type(storage).__name__}")
  if type(storage_offset) is not int:
    raise FormatError(f"tensor offset must be an int, got {storage_offset!r}")
  size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
  if len(size) != len(stride) or min(size, default=0) < 0:
    raise FormatError(f"tensor size {size} and stride {stride} do not fit")
  storage.users += 1
  return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *unused: Any) -> TensorRef:
  if not isinstance(data, TensorRef):
    raise FormatError(f"a parameter must wrap a tensor, got {type(data).__name__}")
  return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRef:
  """torch pickles tensor subclasses (Parameter) as func(*args) plus a type to cast to."""
  del new_type, state
  if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
    raise UnsafePickleError(f"refusing _rebuild_from_type_v2 with {func!r}: only torch's "
                            "tensor rebuild functions are expected")
  return func(*args)


class _TensorType(NoBuild):
  """torch.Tensor / torch.nn.Parameter as the `new_type` argument above (never called)."""


TORCH_GLOBALS = allow_list(STDLIB_GLOBALS, {
    "torch._utils": {"_rebuild_tensor_v2": _rebuild_tensor, "_rebuild_tensor": _rebuild_tensor,
                     "_rebuild_parameter": _rebuild_parameter,
                     "_rebuild_parameter_with_state": _rebuild_parameter},
    "torch._tensor": {"_rebuild_from_type_v2": _rebuild_from_type_v2, "Tensor": _TensorType},
    "torch.tensor": {"_rebuild_from_type_v2": _rebuild_from_type_v2},
    "torch": {"Tensor": _TensorType, **{name: StorageType(name) for name in _STORAGE_DTYPES}},
    "torch.nn.parameter": {"Parameter": _TensorType},
    "torch.storage": {"UntypedStorage": StorageType("UntypedStorage")},
})


# ------------------------------------------------------------------------------------------
# Readers.


def _storage_from_pid(pid: Any, storages: dict[str, Storage], source: str,
                      legacy: bool) -> Storage:
  n = 6 if legacy else 5
  if not isinstance(pid, tuple) or len(pid) != n or pid[0] not in ("storage", b"storage"):
    raise UnsafePickleError(f"refusing persistent id {str(pid)[:100]} in {source}: only "
                            f"('storage', type, key, location, numel{', view' if legacy else ''})"
                            " is expected")
  storage_type, key, _, numel = pid[1:5]
  if not isinstance(storage_type, StorageType):
    raise FormatError(f"{source}: storage type {storage_type!r} is not a torch storage class")
  if not isinstance(key, str) or type(numel) is not int or numel < 0:
    raise FormatError(f"{source}: bad storage id {str(pid)[:100]}")
  if key not in storages:
    storages[key] = Storage(storage_type, key, numel)
  storage = storages[key]
  if legacy and pid[5] is not None:
    # Pre-1.0 storage views: (view_key, offset, size) within the root storage.
    raise FormatError(f"{source}: storage views (pre-1.0 torch files) are not supported")
  return storage


def unpickle_file(f: BinaryIO, source: str, allowed: Mapping[tuple[str, str], Any],
                  persistent_load: Any = None) -> Any:
  """One pickle from `f` through RestrictedUnpickler; decoding errors become FormatError."""
  try:
    return RestrictedUnpickler(f, source=source, allowed=allowed,
                               persistent_load=persistent_load).load()
  except InteropError as e:
    if source in str(e):
      raise
    raise type(e)(f"{source}: {e}") from None  # raised by a replacement, which knows no file
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError, KeyError, UnicodeDecodeError, struct.error, MemoryError) as e:
    raise FormatError(f"{source}: truncated or corrupt pickle data ({type(e).__name__}: "
                      f"{str(e)[:120]})") from None


def _read_zip(path: str, allowed: Mapping[tuple[str, str], Any]) -> tuple[Any, list[Storage]]:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise FormatError(f"{path}: a truncated or corrupt zip archive ({e}); expected a PyTorch "
                      "zip-format file (torch.save)") from None
  with zf, open(path, "rb") as raw:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      kind = " (an .npz of numpy arrays?)" if any(n.endswith(".npy") for n in names) else ""
      raise FormatError(f"{path}: a zip archive without a single '<name>/data.pkl'{kind}; "
                        "expected a PyTorch zip-format file (torch.save)")
    prefix = pkls[0][:-len("data.pkl")]
    if prefix + "constants.pkl" in names:
      raise FormatError(f"{path}: a TorchScript archive (torch.jit.save); expected a "
                        "torch.save file (save the module's state_dict() instead)")
    order = "<"
    if prefix + "byteorder" in names:
      order = {b"little": "<", b"big": ">"}.get(zf.read(prefix + "byteorder"), None)
      if order is None:
        raise FormatError(f"{path}: unknown byteorder record")
    storages: dict[str, Storage] = {}
    try:
      pickle_bytes = zf.read(pkls[0])
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
      raise FormatError(f"{path}: truncated or corrupt data.pkl ({e})") from None
    obj = unpickle_file(io.BytesIO(pickle_bytes), path, allowed,
                    lambda pid: _storage_from_pid(pid, storages, path, legacy=False))
    for st in storages.values():
      name = f"{prefix}data/{st.key}"
      dtype = st.type.dtype.newbyteorder(order) if st.type.dtype.itemsize > 1 else st.type.dtype
      nbytes = st.numel * dtype.itemsize
      try:
        info = zf.getinfo(name)
      except KeyError:
        raise FormatError(f"{path}: storage record {name!r} is missing") from None
      if info.file_size < nbytes:
        raise FormatError(f"{path}: storage record {name!r} has {info.file_size} bytes, "
                          f"expected {nbytes}")
      st.data = _read_member(zf, raw, info, nbytes, path).view(dtype)
  return obj, list(storages.values())


def _read_member(zf: zipfile.ZipFile, raw: BinaryIO, info: zipfile.ZipInfo, nbytes: int,
                 path: str) -> np.ndarray:
  """The first `nbytes` of a member into a fresh uint8 array (CRC checked)."""
  if info.compress_type != zipfile.ZIP_STORED:
    try:
      return np.frombuffer(bytearray(zf.read(info)[:nbytes]), np.uint8)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
      raise FormatError(f"{path}: corrupt record {info.filename!r} ({e})") from None
  # Stored records (what torch writes): read straight into the array, one copy, no mmap.
  raw.seek(info.header_offset)
  header = raw.read(30)
  if len(header) != 30 or header[:4] != _ZIP_MAGIC:
    raise FormatError(f"{path}: bad local header of record {info.filename!r}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  raw.seek(info.header_offset + 30 + name_len + extra_len)
  buf = np.empty(info.file_size, np.uint8)
  got = raw.readinto(memoryview(buf))
  if got != info.file_size:
    raise FormatError(f"{path}: record {info.filename!r} is truncated ({got} of "
                      f"{info.file_size} bytes)")
  if zlib.crc32(buf) != info.CRC:
    raise FormatError(f"{path}: record {info.filename!r} fails its CRC check (corrupt file)")
  return buf[:nbytes] if nbytes < buf.size else buf


def read_legacy(f: BinaryIO, source: str, allowed: Mapping[tuple[str, str], Any]
                ) -> tuple[Any, list[Storage]]:
  """The object of a legacy-format torch file (see the module doc) and its storages."""
  try:
    magic = unpickle_file(f, source, {})
  except UnsafePickleError:  # some other pickle with globals: the wrong kind of file
    magic = None
  if magic != MAGIC_NUMBER:
    raise FormatError(f"{source}: a pickle that is not a torch.save file (no torch magic "
                      "number); expected a PyTorch .pth file (for a stylegan2-ada "
                      "network-snapshot-*.pkl use load_nvidia_pickle)")
  version = unpickle_file(f, source, {})
  if version != PROTOCOL_VERSION:
    raise FormatError(f"{source}: torch legacy protocol version {version!r}, expected "
                      f"{PROTOCOL_VERSION}")
  unpickle_file(f, source, {})  # sys_info: the data below is little-endian whatever it says
  storages: dict[str, Storage] = {}
  obj = unpickle_file(f, source, allowed,
                  lambda pid: _storage_from_pid(pid, storages, source, legacy=True))
  keys = unpickle_file(f, source, {})
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
    raise FormatError(f"{source}: the storage key list does not match the storages used")
  for key in keys:
    st = storages[key]
    head = f.read(8)
    if len(head) != 8:
      raise FormatError(f"{source}: truncated before the data of storage {key!r}")
    (numel,) = struct.unpack("<q", head)
    if numel != st.numel:
      raise FormatError(f"{source}: storage {key!r} has {numel} elements in the data, "
                        f"{st.numel} in the pickle")
    nbytes = numel * st.type.dtype.itemsize
    pos = f.tell()
    remaining = f.seek(0, io.SEEK_END) - pos
    f.seek(pos)
    if nbytes > remaining:  # checked before allocating: the count comes from the file
      raise FormatError(f"{source}: truncated data of storage {key!r} ({remaining} of "
                        f"{nbytes} bytes)")
    buf = np.empty(nbytes, np.uint8)
    got = f.readinto(memoryview(buf))
    if got != buf.size:
      raise FormatError(f"{source}: truncated data of storage {key!r} ({got} of "
                        f"{buf.size} bytes)")
    st.data = buf.view(st.type.dtype)
  return obj, list(storages.values())


def load_torch_file(path: str | os.PathLike,
                    allowed: Mapping[tuple[str, str], Any] | None = None) -> Any:
  """The object a `torch.save` file holds, tensors as numpy arrays (no torch needed).

  Dicts (OrderedDict included) come back as dicts, lists/tuples as such, numbers and
  strings as themselves. Only the globals in `allowed` (default `TORCH_GLOBALS`) can be
  named by the file; anything else raises UnsafePickleError before it is resolved.
  Raises FormatError (naming the file) for empty, truncated, corrupt or non-torch files.
  """
  path = os.fspath(path)
  allowed = TORCH_GLOBALS if allowed is None else allowed
  with open(path, "rb") as f:
    head = f.read(4)
    if not head:
      raise FormatError(f"{path}: the file is empty; expected a PyTorch .pth file")
    if head == _ZIP_MAGIC:
      obj, storages = None, None
    elif head[:1] in PICKLE_STARTS:
      f.seek(0)
      obj, storages = read_legacy(f, path, allowed)
    else:
      raise FormatError(f"{path}: neither a zip archive nor a pickle (starts with {head!r}); "
                        "expected a PyTorch .pth file (torch.save)")
  if obj is None:
    obj, storages = _read_zip(path, allowed)
  del storages
  try:
    return materialize(obj, path)
  except RecursionError:
    raise FormatError(f"{path}: nested too deeply to be a state dict") from None


def materialize(obj: Any, source: str) -> Any:
  """`obj` with every TensorRef replaced by its numpy array (dicts/lists/tuples walked)."""
  if isinstance(obj, TensorRef):
    return obj.to_numpy(source)
  if isinstance(obj, Mapping):
    return {k: materialize(v, source) for k, v in obj.items()}
  if isinstance(obj, list):
    return [materialize(v, source) for v in obj]
  if isinstance(obj, tuple):
    return tuple(materialize(v, source) for v in obj)
  return obj


def flatten_arrays(obj: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
  """(dotted key, array) for every array in nested dicts/lists (other leaves skipped)."""
  if isinstance(obj, np.ndarray):
    yield prefix, obj
  elif isinstance(obj, Mapping):
    for k, v in obj.items():
      yield from flatten_arrays(v, f"{prefix}.{k}" if prefix else str(k))
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      yield from flatten_arrays(v, f"{prefix}.{i}" if prefix else str(i))


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A `.pth` state dict as {key: numpy array}, without torch.

  Reads PyTorch's zip format and the legacy format; float32/float64/float16/int*/uint8/bool
  tensors keep their dtype, bfloat16 becomes float32 (exactly). Nested dicts such as
  `{'state_dict': {...}}` or `{'G': {...}, 'D': {...}}` are flattened with '.'
  (`'G.linear.weight'`); non-tensor entries (step counters, configs) are left out.

  Raises:
    UnsafePickleError: the file names a global outside the allow-list (nothing was run).
    FormatError: empty, truncated, corrupt, or not a torch file / holds no tensors.
  """
  obj = load_torch_file(path)
  out = dict(flatten_arrays(obj))
  if not out:
    raise FormatError(f"{os.fspath(path)}: holds no tensors ({type(obj).__name__}); expected "
                      "a state dict")
  return out


# ------------------------------------------------------------------------------------------
# Writer: pickle opcodes emitted directly (the pickler would need torch's objects).


def _storage_name(dtype: np.dtype) -> str:
  if dtype.name == "bfloat16":  # ml_dtypes.bfloat16, as jax uses
    return "BFloat16Storage"
  names = {"f4": "FloatStorage", "f8": "DoubleStorage", "f2": "HalfStorage",
           "i8": "LongStorage", "i4": "IntStorage", "i2": "ShortStorage",
           "i1": "CharStorage", "u1": "ByteStorage", "b1": "BoolStorage"}
  key = f"{dtype.kind}{dtype.itemsize}"
  if key not in names:
    raise ValueError(f"dtype {dtype} has no torch storage type; expected one of float16/32/64, "
                     "bfloat16, int8/16/32/64, uint8, bool")
  return names[key]


class _PickleWriter:
  """Protocol-2 opcodes for dicts, lists, strings, numbers and tensors (torch's layout)."""

  def __init__(self):
    self.out = io.BytesIO()
    self.out.write(b"\x80\x02")                       # PROTO 2
    self.storages: list[tuple[str, np.ndarray]] = []

  def _global(self, module: str, name: str) -> None:
    self.out.write(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def _int(self, v: int) -> None:
    if -2**31 <= v < 2**31:
      self.out.write(b"J" + struct.pack("<i", v))     # BININT
    else:
      b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
      self.out.write(b"\x8a" + bytes([len(b)]) + b)   # LONG1

  def _str(self, s: str) -> None:
    b = s.encode("utf-8")
    self.out.write(b"X" + struct.pack("<I", len(b)) + b)  # BINUNICODE

  def value(self, v: Any) -> None:
    w = self.out.write
    if isinstance(v, np.ndarray) or (hasattr(v, "__array__") and hasattr(v, "dtype")):
      self.tensor(np.asarray(v))
    elif isinstance(v, Mapping):
      w(b"}")                                         # EMPTY_DICT
      items = list(v.items())
      for i in range(0, len(items), 1000):
        w(b"(")                                       # MARK
        for k, x in items[i:i + 1000]:
          if not isinstance(k, str):
            raise ValueError(f"dict keys must be strings, got {k!r}")
          self._str(k)
          self.value(x)
        w(b"u")                                       # SETITEMS
    elif isinstance(v, (list, tuple)):
      w(b"(")
      for x in v:
        self.value(x)
      w(b"t" if isinstance(v, tuple) else b"l")      # TUPLE / LIST
    elif v is None:
      w(b"N")
    elif isinstance(v, (bool, np.bool_)):
      w(b"\x88" if v else b"\x89")                    # NEWTRUE / NEWFALSE
    elif isinstance(v, (int, np.integer)):
      self._int(int(v))
    elif isinstance(v, (float, np.floating)):
      w(b"G" + struct.pack(">d", float(v)))           # BINFLOAT
    elif isinstance(v, str):
      self._str(v)
    else:
      raise ValueError(f"cannot write a {type(v).__name__} to a torch file")

  def tensor(self, a: np.ndarray) -> None:
    w = self.out.write
    key = str(len(self.storages))
    name = _storage_name(a.dtype)
    data = np.array(a, order="C", copy=None)  # not ascontiguousarray: it makes 0-d 1-d
    if data.dtype.itemsize > 1 and data.dtype.byteorder == ">":
      data = data.astype(data.dtype.newbyteorder("<"))
    self.storages.append((key, data))
    self._global("torch._utils", "_rebuild_tensor_v2")
    w(b"(")                                           # MARK (args)
    w(b"(")                                           # persistent id tuple
    self._str("storage")
    self._global("torch", name)
    self._str(key)
    self._str("cpu")
    self._int(data.size)
    w(b"tQ")                                          # TUPLE, BINPERSID
    self._int(0)                                      # storage offset
    self.value(tuple(int(n) for n in data.shape))
    strides = tuple(int(s // data.itemsize) for s in data.strides) if data.size else tuple(
        int(math.prod(data.shape[i + 1:])) for i in range(data.ndim))
    self.value(strides)
    w(b"\x89")                                        # requires_grad False
    self._global("collections", "OrderedDict")
    w(b")R")                                          # backward hooks: OrderedDict()
    w(b"tR")                                          # TUPLE, REDUCE

  def finish(self) -> bytes:
    self.out.write(b".")                              # STOP
    return self.out.getvalue()


def write_torch_file(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` (nested dicts/lists of numpy arrays, strings, numbers) as `torch.save`'s
  zip format, readable by `torch.load(path)` (weights_only too) and by `load_torch_file`.

  Arrays become tensors of the same dtype and shape (C-contiguous, little-endian storages,
  one per array, 64-byte aligned as torch writes them). The file is written to a temporary
  name in the same folder and renamed, so a crash never leaves a half file.
  """
  path = os.fspath(path)
  writer = _PickleWriter()
  writer.value(obj)
  pickle_bytes = writer.finish()
  archive = os.path.splitext(os.path.basename(path))[0] or "archive"
  archive = "".join(c if c.isalnum() or c in "_-" else "_" for c in archive)
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(suffix=".pth.tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
      _write_record(zf, f, f"{archive}/data.pkl", pickle_bytes)
      _write_record(zf, f, f"{archive}/byteorder", b"little")
      for key, data in writer.storages:
        _write_record(zf, f, f"{archive}/data/{key}", memoryview(data.reshape(-1).view(np.uint8)))
      _write_record(zf, f, f"{archive}/version", b"3\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _write_record(zf: zipfile.ZipFile, f: BinaryIO, name: str, data: Any) -> None:
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  # Pad the local header's extra field so the data starts on a 64-byte boundary (torch's
  # 'FB' padding record), which torch.load(mmap=True) relies on.
  start = f.tell() + 30 + len(name.encode()) + 4
  pad = -start % _STORAGE_ALIGNMENT
  info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
  zf.writestr(info, data)
