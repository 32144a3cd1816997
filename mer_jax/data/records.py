"""Serialized examples: a small JSON header followed by the raw bytes of each numpy array (no pickle)."""

import json
import struct

import numpy as np

MAGIC = b'MERR'
_HEADER_LENGTH = struct.Struct('<I')


def encode(example: dict) -> bytes:
  """Serializes a dict of numpy arrays and JSON values (str, int, float, bool, None, lists) to bytes."""
  fields, arrays, blobs = {}, [], []
  offset = 0
  for key, value in example.items():
    if isinstance(value, np.ndarray):
      if value.dtype.hasobject:
        raise TypeError(f'cannot encode array {key!r} of dtype object')
      data = np.ascontiguousarray(value).tobytes()
      arrays.append({'name': key, 'dtype': value.dtype.str, 'shape': list(value.shape),
                     'offset': offset, 'nbytes': len(data)})
      blobs.append(data)
      offset += len(data)
    else:
      fields[key] = value.item() if isinstance(value, np.generic) else value
  try:
    header = json.dumps({'fields': fields, 'arrays': arrays}, allow_nan=True).encode()
  except TypeError as e:
    raise TypeError(f'cannot encode example fields {sorted(fields)}: {e}') from e
  return b''.join([MAGIC, _HEADER_LENGTH.pack(len(header)), header, *blobs])


def _header(raw: bytes) -> tuple[dict, int]:
  """An encoded example's JSON header and the offset where its array bytes start."""
  if raw[:len(MAGIC)] != MAGIC:
    raise ValueError('not an encoded example: bad magic bytes')
  start = len(MAGIC) + _HEADER_LENGTH.size
  (header_length,) = _HEADER_LENGTH.unpack_from(raw, len(MAGIC))
  return json.loads(raw[start:start + header_length]), start + header_length


def fields(raw: bytes) -> dict:
  """The JSON fields of an encoded example, without reading its arrays."""
  return dict(_header(raw)[0]['fields'])


def decode(raw: bytes) -> dict:
  """Inverse of `encode`: JSON fields as Python values, arrays as writable numpy arrays."""
  header, body = _header(raw)
  example = dict(header['fields'])
  for spec in header['arrays']:
    dtype = np.dtype(spec['dtype'])
    count = spec['nbytes'] // dtype.itemsize
    array = np.frombuffer(raw, dtype, count=count, offset=body + spec['offset'])
    example[spec['name']] = array.reshape(spec['shape']).copy()
  return example
