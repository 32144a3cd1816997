"""Grain input pipeline: prepared shards -> host shard -> seeded shuffle -> fixed-shape examples -> batches."""

import dataclasses
import functools
import json
import os
import re
from typing import Any, Iterator

import grain
import numpy as np
from ml_collections import ConfigDict

from mer_jax.data import augment_config, chat, prepare, pseudo_labels, weighted
from mer_jax.data.augment import Augmenter, example_rng
from mer_jax.data.text import QUESTIONS, PromptBuilder, PromptLayout, TextTokenizer


def load_info(data_dir: str) -> dict:
  """Reads a prepared dataset's dataset_info.json."""
  path = os.path.join(data_dir, prepare.INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {data_dir} a dataset written by `mer-jax prepare`?')
  with open(path) as f:
    info = json.load(f)
  prepare.tfds_dir(data_dir, info)
  return info


def tokenizer_path(config: Any) -> str:
  """config.data.tokenizer; else the pretrained LLM's (config.model.llm.init_from) tokenizer.json if it has
  one; else the tokenizer.json saved with the prepared dataset."""
  if config.data.tokenizer:
    return config.data.tokenizer
  pretrained = os.path.join(config.model.llm.init_from, prepare.TOKENIZER_FILE)
  if config.model.llm.init_from and os.path.exists(pretrained):
    return pretrained
  return os.path.join(config.data.dir, prepare.TOKENIZER_FILE)


def chat_template(config: Any, tokenizer_file: str) -> chat.ChatTemplate | None:
  """The tokenizer's chat template when config.data.chat_template is 'auto' and it has one; None for 'none'."""
  choice = config.data.get('chat_template', 'auto')  # runs saved before the key existed used no template file
  if choice not in ('auto', 'none'):
    raise ValueError(f"config.data.chat_template={choice!r}; choose 'auto' or 'none'")
  if choice == 'none':
    return None
  return chat.load_chat_template(os.path.dirname(os.path.abspath(tokenizer_file)))


class IndexedSource(grain.sources.RandomAccessDataSource):
  """A view of a data source restricted to some of its indices."""

  def __init__(self, source: Any, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Any:
    return self.source[int(self.indices[index])]


def validation_indices(num_records: int, fraction: float, seed: int) -> np.ndarray:
  """The sorted indices of the train split held out for validation (seeded)."""
  count = int(round(num_records * fraction))
  return np.sort(np.random.default_rng(seed).permutation(num_records)[:count])


SPLIT_PART = re.compile(r'^\s*(\w+)\s*(\[[^\]]*\])?\s*$')


def split_names(expression: str) -> list[str]:
  """The prepared splits a TFDS split expression reads: 'session1+session2[:50%]' -> ['session1', 'session2']."""
  names = []
  for part in expression.split('+'):
    match = SPLIT_PART.match(part)
    if not match:
      raise ValueError(f'split {expression!r}: {part!r} is not a split name with an optional slice such as train[:10%]')
    names.append(match.group(1))
  return names


@functools.lru_cache(maxsize=16)
def _tfds_builder(directory: str) -> Any:
  """The TFDS builder of a prepared dataset directory, opened once per process."""
  import tensorflow_datasets as tfds
  return tfds.builder_from_directory(directory)


@functools.lru_cache(maxsize=64)
def check_shards(directory: str, split: str) -> None:
  """Opens every array_record file of a prepared split: a truncated or corrupt file is named before any step."""
  from array_record.python.array_record_module import ArrayRecordReader
  for path in _tfds_builder(directory).info.splits[split].filepaths:
    try:
      ArrayRecordReader(os.fspath(path)).close()
    except RuntimeError as error:
      raise ValueError(f'{path} cannot be read ({str(error).split(";")[0]}): the file is truncated or damaged; '
                       'run `mer-jax prepare` again') from error


def tfds_source(directory: str, split: str) -> Any:
  """A random-access source of a TFDS split expression (e.g. 'train[:10%]+test') of a prepared dataset."""
  for name in split_names(split):
    check_shards(directory, name)
  return _tfds_builder(directory).as_data_source(split)


def open_split(data_config: Any, info: dict, split: str) -> IndexedSource:
  """A split's examples (a TFDS split expression); 'val' and the rest of the train split are carved by val_fraction."""
  source_split = data_config.train_split if split == 'val' else split
  unknown = [name for name in split_names(source_split) if name not in info['splits']]
  if unknown:
    known = sorted(info['splits']) + (['val'] if data_config.val_fraction > 0 else [])
    raise ValueError(f'split {unknown[0]!r} is not in {data_config.dir}; known splits: {known}')
  source = tfds_source(prepare.tfds_dir(data_config.dir, info), source_split)
  all_indices = np.arange(len(source))
  if source_split != data_config.train_split or data_config.val_fraction <= 0:
    return IndexedSource(source, all_indices)
  held_out = validation_indices(len(source), data_config.val_fraction, data_config.shuffle_seed)
  if split == 'val':
    return IndexedSource(source, held_out)
  return IndexedSource(source, np.setdiff1d(all_indices, held_out))


def text_fields(example: dict) -> dict[str, Any]:
  """A TFDS example's text and scalar fields as Python values (str, list of str, float, bool)."""
  fields = {}
  for key, value in example.items():
    if key in ('audio', 'frames'):
      continue
    if isinstance(value, bytes):
      value = value.decode('utf-8')
    elif key == 'openset':
      value = [word.decode('utf-8') for word in value]
    elif isinstance(value, np.generic):
      value = value.item()
    fields[key] = value
  return fields


def train_valence_mean(info: dict, split: str) -> float:
  """The mean valence of a (possibly joined) training split, over the clips that have one.

  0 when none do, or when the dataset has no such split (a run evaluated on another dataset).
  """
  entries = [info['splits'][name] for name in split_names(split) if name in info['splits']]
  count = sum(e['with_valence'] for e in entries)
  return sum(e['valence_mean'] * e['with_valence'] for e in entries if e['with_valence']) / count if count else 0.0


def prompt_builder(config: Any, info: dict) -> PromptBuilder:
  """The prompt builder for the configured modalities and the dataset's labels."""
  layout = PromptLayout(
      modalities=tuple(config.model.modalities),
      num_audio_tokens=config.model.audio.num_soft_tokens,
      num_video_tokens=config.model.vision.num_soft_tokens,
      max_transcript_tokens=config.data.max_transcript_tokens,
      seq_len=config.data.seq_len,
  )
  path = tokenizer_path(config)
  variety = augment_config.from_config(config).prompt_variety
  return PromptBuilder(TextTokenizer(path), layout, info['labels'], chat_template(config, path),
                       explanations=config.data.get('explanations', False),
                       num_questions=len(QUESTIONS) if variety else 1)


class Featurizer:
  """Turns a serialized record into the model's fixed-shape example (see text.PromptBuilder).

  With an `augmenter`, a generator passed with each record draws its augmentations; `drop` names
  modalities every example lacks (evaluation with a modality removed).
  """

  def __init__(self, builder: PromptBuilder, modalities: tuple[str, ...], augmenter: Augmenter | None = None,
               drop: tuple[str, ...] = ()):
    self.builder = builder
    self.modalities = modalities
    self.augmenter = augmenter
    self.drop = drop
    self.label_ids = {label: i for i, label in enumerate(builder.labels)}

  def __call__(self, prepared: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    record = text_fields(prepared)
    label_id = self.label_ids.get(record['label'], -1)
    answer = self.builder.answer_ids(record['label'], record['reason'])
    audio = prepared['audio'] if 'audio' in self.modalities else None
    frames = prepared['frames'] if 'video' in self.modalities else None
    sentence, missing, question = record['sentence'], self.drop, 0
    if self.augmenter is not None and rng is not None:
      out = self.augmenter(audio, frames, sentence, rng)
      audio, frames, sentence, question = out['audio'], out['frames'], out['sentence'], out['question']
      missing = tuple(sorted(set(missing) | set(out['missing'])))
    example = self.builder.build(sentence, answer, missing, question)
    example['label'] = np.int32(label_id)
    example['valence'] = np.float32(record['valence'])
    if audio is not None:
      example['audio'] = audio
    if frames is not None:
      example['frames'] = frames
    return example


def augmenter(config: Any, info: dict, builder: PromptBuilder, babble_source: Any = None) -> Augmenter | None:
  """The host-side augmenter config.augment asks for, or None when it asks for none."""
  augment = augment_config.from_config(config)
  if not augment.host_side:
    return None
  return Augmenter(augment, tuple(config.model.modalities), info['audio']['sample_rate'], builder.num_questions,
                   babble_source)


class HostRows(grain.MapDataset):
  """This host's rows of every global batch of an endless example stream.

  Host `shard` of `count` reads rows [shard * size, (shard + 1) * size) of each global batch of
  `count * size` examples. The global order does not depend on the number of hosts, so a run
  resumed on more or fewer hosts (same global batch) continues with exactly the same examples.
  """

  def __init__(self, parent: grain.MapDataset, shard: int, count: int, size: int):
    super().__init__(parent)
    self.shard, self.count, self.size = shard, count, size

  def __len__(self) -> int:
    return len(self._parent) // self.count

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self.size)
    return self._parent[step * self.count * self.size + self.shard * self.size + row]


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
  """One more prepared dataset mixed into training: its directory, training split and sampling weight."""

  data_dir: str
  split: str
  weight: float


def parse_mixture(spec: str) -> list[MixtureEntry]:
  """config.data.mixture: comma-separated `DIR[@SPLIT][=WEIGHT]` (split 'train', weight 1.0 by default)."""
  entries = []
  for location, weight in weighted.parse_weighted(spec, 'config.data.mixture'):
    data_dir, _, split = location.partition('@')
    entries.append(MixtureEntry(os.path.abspath(data_dir), split or 'train', weight))
  return entries


def _training_examples(data_config: Any, info: dict, split: str, featurizer: Featurizer, seed: int,
                       augment_seed: tuple[int, int] | None = None) -> grain.MapDataset:
  """A split's featurized examples, shuffled with `seed` and repeated without end; refuses unlabelled clips.

  With `augment_seed` (run seed, stream), each example's augmentations are drawn by
  augment.example_rng from it and the example's place in the stream, so a resumed run repeats them.
  """
  source = open_split(data_config, info, split)
  for name in split_names(split):
    entry = info['splits'][name]
    if entry['labelled'] < entry['count']:
      raise ValueError(f"split {name!r} of {data_config.dir} has {entry['count'] - entry['labelled']} unlabelled "
                       f"clip(s) of {entry['count']}: train on labelled splits (label or leave out the others)")
  return _endless_featurized(source, featurizer, seed, augment_seed)


def _endless_featurized(source: Any, featurizer: Featurizer, seed: int,
                        augment_seed: tuple[int, int] | None) -> grain.MapDataset:
  """`source`'s records shuffled with `seed`, repeated without end and featurized (augmented per augment_seed)."""
  examples = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  if featurizer.augmenter is None or augment_seed is None:
    return examples.map(featurizer)
  if featurizer.augmenter.babble_source is None:
    featurizer.augmenter.babble_source = source
  return examples.map_with_index(lambda index, record: featurizer(record, example_rng(*augment_seed, index)))


def pseudo_label_source(data_config: Any, info: dict, path: str) -> pseudo_labels.RelabelledSource:
  """The clips of data_config.dir that the pseudo-label file `path` names, with its labels (any split holds them)."""
  rows = pseudo_labels.read_csv(path, info['labels'])
  directory = prepare.tfds_dir(data_config.dir, info)
  return pseudo_labels.relabelled_source(path, rows, {name: tfds_source(directory, name) for name in info['splits']})


def train_dataset(config: Any, info: dict, batch_size: int, shard_index: int = 0, shard_count: int = 1,
                  builder: PromptBuilder | None = None) -> grain.IterDataset:
  """Endless batches of this host's `batch_size` rows of each seeded-shuffled global batch (checkpointable).

  With config.data.mixture, examples of every listed dataset are drawn by weight among those of
  config.data.dir's train split (weight 1), each prompted with its own dataset's labels; with
  config.data.pseudo_labels, so are the clips of config.data.dir each file names, with its labels.
  """
  builder = builder or prompt_builder(config, info)
  modalities = tuple(config.model.modalities)
  seed = config.data.shuffle_seed
  featurizer = Featurizer(builder, modalities, augmenter(config, info, builder))
  datasets = [_training_examples(config.data, info, config.data.train_split, featurizer, seed, (config.seed, 0))]
  weights = [1.0]
  for index, entry in enumerate(parse_mixture(config.data.get('mixture', '')), start=1):
    other_info = load_info(entry.data_dir)
    other_config = ConfigDict({'dir': entry.data_dir, 'train_split': entry.split, 'val_fraction': 0.0})
    other_builder = builder.for_labels(other_info['labels'])
    featurizer = Featurizer(other_builder, modalities, augmenter(config, other_info, other_builder))
    datasets.append(_training_examples(other_config, other_info, entry.split, featurizer, seed + index,
                                       (config.seed, index)))
    weights.append(entry.weight)
  for entry in pseudo_labels.parse_spec(config.data.get('pseudo_labels', '')):
    source = pseudo_label_source(config.data, info, entry.path)
    featurizer = Featurizer(builder, modalities, augmenter(config, info, builder))
    datasets.append(_endless_featurized(source, featurizer, seed + len(datasets), (config.seed, len(datasets))))
    weights.append(entry.weight)
  examples = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights)
  dataset = HostRows(examples, shard_index, shard_count, batch_size).batch(batch_size, drop_remainder=True)
  read_options = grain.ReadOptions(num_threads=config.data.worker_threads, prefetch_buffer_size=4)
  return dataset.to_iter_dataset(read_options)


def eval_batches(config: Any, info: dict, split: str, batch_size: int, builder: PromptBuilder | None = None,
                 drop: tuple[str, ...] = ()) -> Iterator[tuple[dict[str, np.ndarray], list[dict]]]:
  """A split in order, read once: (batch, text fields of its real examples); the last batch is padded by repetition.

  Modalities in `drop` are missing from every example (their prompt says so, the model ignores their input).
  """
  source = open_split(config.data, info, split)
  featurizer = Featurizer(builder or prompt_builder(config, info), tuple(config.model.modalities), drop=drop)
  for start in range(0, len(source), batch_size):
    prepared = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    examples = [featurizer(example) for example in prepared]
    examples += [examples[-1]] * (batch_size - len(prepared))
    yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}, [text_fields(e) for e in prepared]
