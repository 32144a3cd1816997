"""The run directory: config.json, what inference needs (inference/), the trainer's lock, the read-only params restore.

A workdir serves inference on its own: at the start of training, inference/ receives the
tokenizer (with its chat template and special-token files), preprocessing.json (labels and how
`prepare` decoded the clips) and config.json (the run's config for one host, tokenizer relative to
inference/, vocabulary size explicit, no init_from). config.json at the top stores absolute paths.
"""

import contextlib
import copy
import datetime
import fcntl
import json
import os
import socket
from typing import Any, Iterator

import jax
from ml_collections import ConfigDict

from mer_jax.data import chat, pipeline, pseudo_labels
from mer_jax.train import checkpoint, init_run
from mer_jax.train.experiment import Experiment
from mer_jax.train.state import PRETRAINED

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
INFERENCE_DIR = 'inference'
PREPROCESSING_FILE = 'preprocessing.json'
LOCK_FILE = 'trainer.lock'
# The dataset_info.json entries that inference needs: labels and how `prepare` decoded the clips.
PREPROCESSING_KEYS = ('labels', 'audio', 'frames', 'duration_s')


class RunError(Exception):
  """A problem with a run's files, disk or data that the user must fix; reported in one line."""


def read_json(path: str, missing: str) -> dict:
  """The JSON object in `path`; fails naming the file, with `missing` as the hint when it is absent."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {missing}')
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as error:
    raise ValueError(f'{path} is not valid JSON: {error}') from error


def write_json(path: str, value: Any) -> None:
  """Writes `value` to `path` as indented JSON."""
  with open(path, 'w') as f:
    json.dump(value, f, indent=2)


def flatten(tree: dict, prefix: str = '') -> dict[str, object]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat: dict[str, object] = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def absolute_paths(config: ConfigDict) -> ConfigDict:
  """A copy of `config` whose dataset, tokenizer, mixture, pseudo-label, init_from and init.run paths are absolute."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.data.dir = os.path.abspath(config.data.dir)
    if config.data.tokenizer:
      config.data.tokenizer = os.path.abspath(config.data.tokenizer)
    if config.data.get('mixture'):
      config.data.mixture = ','.join(f'{e.data_dir}@{e.split}={e.weight}'
                                     for e in pipeline.parse_mixture(config.data.mixture))
    if config.data.get('pseudo_labels'):
      config.data.pseudo_labels = ','.join(f'{e.path}={e.weight}'
                                           for e in pseudo_labels.parse_spec(config.data.pseudo_labels))
    for name in PRETRAINED:
      if config.model[name].init_from:
        config.model[name].init_from = os.path.abspath(config.model[name].init_from)
    if init_run.source_run(config):
      config.init.run = os.path.abspath(config.init.run)
  return config


def save_config(config: ConfigDict, workdir: str) -> None:
  """Writes the resolved config to workdir/config.json, reporting keys that changed since the last run."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      old = flatten(json.load(f))
    changed = sorted(k for k in flatten(new).keys() | old.keys() if flatten(new).get(k) != old.get(k))
    if changed:
      print(f'config differs from {path} in: {", ".join(changed)}; the new values apply')
  os.makedirs(workdir, exist_ok=True)
  write_json(path, new)


def load_config(workdir: str) -> ConfigDict:
  """The config a run was trained with (workdir/config.json)."""
  return ConfigDict(read_json(os.path.join(workdir, CONFIG_FILE), f'train a run in {workdir} first'))


def preprocessing(info: dict, train_split: str) -> dict:
  """What predict and evaluate take from dataset_info.json, plus the training split's mean valence."""
  return {**{key: info[key] for key in PREPROCESSING_KEYS},
          'train_valence_mean': pipeline.train_valence_mean(info, train_split)}


def one_host_config(config: ConfigDict, tokenizer: str, vocab_size: int | None = None) -> ConfigDict:
  """A copy of a run config for inference on this host: no init_from or init.run, `tokenizer`, params over its devices.

  The LLM's vocabulary size is made explicit first (`vocab_size`, else the config's or the init_from checkpoint's).
  """
  config = ConfigDict(json.loads(config.to_json()))
  config.model.llm.vocab_size = vocab_size or config.model.llm.vocab_size or Experiment.pretrained_vocab_size(config)
  for name in PRETRAINED:
    config.model[name].init_from = ''
  if init_run.source_run(config):
    config.init.run = ''
  config.data.tokenizer = tokenizer
  config.mesh.update(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
  return config


def record_run(experiment: Experiment, workdir: str) -> None:
  """Writes config.json and inference/ (tokenizer files, preprocessing.json, the one-host config) into `workdir`."""
  config = experiment.config
  save_config(config, workdir)
  inference_dir = os.path.join(workdir, INFERENCE_DIR)
  os.makedirs(inference_dir, exist_ok=True)
  chat.copy_tokenizer(experiment.builder.tokenizer.path, inference_dir)
  write_json(os.path.join(inference_dir, PREPROCESSING_FILE),
             preprocessing(experiment.info, config.data.train_split))
  inference = one_host_config(config, chat.TOKENIZER_FILE, experiment.vocab_size)
  write_json(os.path.join(inference_dir, CONFIG_FILE), json.loads(inference.to_json()))


def inference_config(workdir: str) -> ConfigDict:
  """The run's config for inference on this host, its tokenizer the workdir's own copy.

  A run trained before inference/ existed falls back to its config.json and the tokenizer it names.
  """
  inference_dir = os.path.abspath(os.path.join(workdir, INFERENCE_DIR))
  path = os.path.join(inference_dir, CONFIG_FILE)
  if not os.path.exists(path):
    config = load_config(workdir)
    return one_host_config(config, os.path.abspath(pipeline.tokenizer_path(config)))
  config = ConfigDict(read_json(path, ''))
  config.data.tokenizer = os.path.join(inference_dir, config.data.tokenizer)
  return config


def inference_info(workdir: str, config: ConfigDict) -> dict:
  """The run's preprocessing.json (labels, prepare settings); from its dataset for a run trained without one."""
  path = os.path.join(workdir, INFERENCE_DIR, PREPROCESSING_FILE)
  if os.path.exists(path):
    return read_json(path, '')
  return preprocessing(pipeline.load_info(config.data.dir), config.data.train_split)


def restore_params(workdir: str, experiment: Experiment) -> tuple[int, Any]:
  """(step, params) of the run's newest usable checkpoint for `experiment`; read-only, no optimizer state."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  restored = checkpoint.restore_latest_params(directory, experiment.abstract_state()['params'])
  if restored is None:
    raise FileNotFoundError(f'no usable checkpoint in {os.path.abspath(directory)}')
  return restored


def restore_run(workdir: str, data_dir: str | None = None,
                devices: list[jax.Device] | None = None) -> tuple[Experiment, int, Any]:
  """The run's Experiment on `devices` (default this host's), its newest checkpoint's step and params.

  Without `data_dir` the Experiment's info is the run's own preprocessing.json (no dataset
  needed); with it, that prepared dataset's info, so its splits can be evaluated.
  """
  config = inference_config(workdir)
  if data_dir is None:
    info = inference_info(workdir, config)
  else:
    config.data.dir = os.path.abspath(data_dir)
    info = pipeline.load_info(config.data.dir)
  experiment = Experiment(config, devices if devices is not None else jax.local_devices(), info)
  step, params = restore_params(workdir, experiment)
  return experiment, step, params


def lock_holder(fd: int) -> dict:
  """The holder recorded in an open lock file ({} when empty or unreadable)."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 4096).decode() or '{}')
  except ValueError:
    return {}


@contextlib.contextmanager
def trainer_lock(workdir: str) -> Iterator[None]:
  """Holds workdir/trainer.lock while training: a second trainer is refused with the holder's host and pid.

  The kernel releases the lock when its process dies (however it dies); a lock file that still
  names a holder is then taken over with a warning.
  """
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise RunError(f'cannot write to the workdir {os.path.abspath(workdir)}: {error.strerror}') from error
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = lock_holder(fd)
    os.close(fd)
    raise RunError(f'{os.path.abspath(workdir)} is in use by another trainer (host {holder.get("host", "?")}, '
                   f'pid {holder.get("pid", "?")}, since {holder.get("since", "?")}); stop it or choose another '
                   '--workdir') from None
  previous = lock_holder(fd)
  if previous:
    checkpoint.warn(f'{path} was left by a trainer that is no longer running (host {previous.get("host")}, '
                    f'pid {previous.get("pid")}); taking it over')
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'since': datetime.datetime.now().isoformat(timespec='seconds')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(holder).encode(), 0)
  try:
    yield
  finally:
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)

