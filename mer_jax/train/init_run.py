"""config.init.run: a run starts from another run's newest checkpoint, for the parameter components both models have.

Components are the model's top-level parts (audio, vision, fusion, llm, valence_head). Within the
components both have, every parameter both have is read; the rest (a modality the other run did
not have, LoRA adapters it did not train) keeps its fresh initialisation. A shared parameter of
another shape, or a run without a usable checkpoint, is refused at start-up.
"""

import os
from typing import Any

import jax

from mer_jax.train import checkpoint

KEY = 'config.init.run'


def source_run(config: Any) -> str:
  """The run directory config.init.run names ('' when unset or the config predates the key)."""
  init = config.get('init')
  return init.get('run', '') if init is not None else ''


def checkpoint_dir(run_dir: str) -> str:
  """The checkpoints/ directory of `run_dir`; ValueError naming the key when there is none."""
  directory = os.path.join(run_dir, 'checkpoints')
  if not os.path.isdir(run_dir):
    raise ValueError(f'{KEY}={run_dir} does not exist')
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise ValueError(f'{KEY}={run_dir} holds no checkpoints: train that run first')
  return directory


def component_of(path: str) -> str:
  """'llm/embed/embedding' -> 'llm'."""
  return path.split('/', 1)[0]


def kept(tree: dict[str, Any], keep: set[str], prefix: str = '') -> dict[str, Any]:
  """The nested dict `tree` with only the leaves whose path ('a/b/c') is in `keep`; emptied branches dropped."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      branch = kept(value, keep, f'{path}/')
      if branch:
        out[key] = branch
    elif path in keep:
      out[key] = value
  return out


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
  """`base` with the leaves of the nested dict `update` put in their places."""
  return {key: (merged(value, update[key]) if isinstance(value, dict) else update[key]) if key in update else value
          for key, value in base.items()}


def selection(saved: dict[str, Any], abstract_params: dict[str, Any], name: str) -> dict[str, Any]:
  """The entries of `abstract_params` to read from checkpoint `name`, whose saved params are `saved`.

  Entries of the components both hold, present on both sides, are read; raises CheckpointMismatch
  naming the entries of another shape, or when the two share no component.
  """
  expected = checkpoint.flat_leaves(abstract_params)
  shared = {component_of(path) for path in saved} & abstract_params.keys()
  both = {path for path in expected.keys() & saved.keys() if component_of(path) in shared}
  if not both:
    raise checkpoint.CheckpointMismatch(
        f'{KEY}: checkpoint {name} shares no parameters with the model '
        f'(checkpoint: {sorted({component_of(path) for path in saved})}; model: {sorted(abstract_params)})')
  found = [f'{path}: checkpoint {tuple(saved[path].shape)}, model {tuple(expected[path].shape)}'
           for path in sorted(both) if tuple(saved[path].shape) != tuple(expected[path].shape)]
  if found:
    raise checkpoint.CheckpointMismatch(
        f'{KEY}: checkpoint {name} does not match the model ({len(found)} difference(s)): '
        f'{"; ".join(found[:checkpoint.SHOWN_DIFFERENCES])}')
  return kept(abstract_params, both)


def check(run_dir: str, abstract_params: dict[str, Any]) -> None:
  """Refuses, before anything is written, a config.init.run whose newest checkpoint cannot start this model."""
  manager = checkpoint.read_only_manager(checkpoint_dir(run_dir))
  try:
    step = max(manager.all_steps())
    selection(checkpoint.saved_params(manager, step), abstract_params, f'{manager.directory}/{step}')
  finally:
    manager.close()


def load(run_dir: str, params: dict[str, Any], abstract_params: dict[str, Any]) -> dict[str, Any]:
  """`params` with every entry that run_dir's newest usable checkpoint shares with them replaced by the checkpoint's.

  `abstract_params` carry the shardings the loaded arrays are placed with (dtypes are cast to
  theirs); the model's other entries, such as LoRA adapters the other run did not have, keep their
  values from `params`.
  """
  restored = checkpoint.restore_newest_params(
      checkpoint_dir(run_dir), lambda saved, name: selection(saved, abstract_params, name))
  if restored is None:
    raise ValueError(f'{KEY}={run_dir}: no checkpoint in it could be read')
  step, loaded = restored
  if jax.process_index() == 0:
    total, read = len(checkpoint.flat_leaves(params)), len(checkpoint.flat_leaves(loaded))
    print(f'initialised {read} of {total} parameter arrays ({", ".join(sorted(loaded))}) from '
          f'{run_dir}/checkpoints/{step} ({KEY}); the other {total - read} start fresh')
  return merged(params, loaded)
