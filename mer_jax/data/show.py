"""What a prepared split holds, one example a line: how a user checks a reader before a long run."""

import json
import os
from typing import Any

from mer_jax.data import pipeline, prepare


def examples(data_dir: str, split: str, limit: int | None = None) -> list[dict[str, Any]]:
  """The first `limit` examples (all when None) of a prepared split: text fields, audio seconds, frames shape."""
  data_dir = os.path.abspath(data_dir)
  info = pipeline.load_info(data_dir)
  unknown = [name for name in pipeline.split_names(split) if name not in info['splits']]
  if unknown:
    raise ValueError(f'split {unknown[0]!r} is not in {data_dir}; known splits: {sorted(info["splits"])}')
  source = pipeline.tfds_source(prepare.tfds_dir(data_dir, info), split)
  count = len(source) if limit is None else min(limit, len(source))
  rate = info['audio']['sample_rate']
  rows = []
  for index in range(count):
    example = source[index]
    fields = pipeline.text_fields(example)
    rows.append({
        'name': fields['name'], 'label': fields['label'], 'openset': fields['openset'],
        'sentiment': fields['sentiment'], 'sentence': fields['sentence'],
        'valence': None if fields['valence'] != fields['valence'] else round(fields['valence'], 4),
        'reason': fields['reason'], 'audio_s': round(len(example['audio']) / rate, 3),
        'frames': list(example['frames'].shape) if fields['has_video'] else None,
    })
  return rows


def format_json(rows: list[dict[str, Any]]) -> str:
  """The examples as one JSON document."""
  return json.dumps(rows, indent=2, ensure_ascii=False)


def format_lines(rows: list[dict[str, Any]]) -> str:
  """One line an example: name, label(s), transcript, valence, reason, audio seconds, frames shape."""
  lines = []
  for row in rows:
    labels = row['label'] or '(unlabelled)'
    if row['openset']:
      labels += ' {' + ', '.join(row['openset']) + '}'
    if row['sentiment']:
      labels += f' [{row["sentiment"]}]'
    valence = 'missing' if row['valence'] is None else f'{row["valence"]:+.3f}'
    frames = 'x'.join(map(str, row['frames'])) if row['frames'] else 'no video'
    lines.append(f'{row["name"]}\t{labels}\t{row["sentence"]!r}\tvalence {valence}\treason {row["reason"]!r}'
                 f'\taudio {row["audio_s"]} s\tframes {frames}')
  return '\n'.join(lines)
