"""Orbax checkpoints of the train state and the Grain iterator position, checksummed; mismatch told from damage."""

import contextlib
import os
import sys
from typing import Any, Callable, Iterator

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

ITEMS = ('state', 'data', 'checksums')


def handlers(state: ocp.CheckpointHandler) -> dict[str, ocp.CheckpointHandler]:
  """The item handlers, with `state` read by the given handler (Standard for the whole state, PyTree for part)."""
  return {'state': state, 'data': ocp.JsonCheckpointHandler(), 'checksums': ocp.JsonCheckpointHandler()}

SHOWN_DIFFERENCES = 3


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose parameters do not fit the config (shapes, dtypes, missing or extra entries)."""


class CheckpointDamaged(ValueError):
  """A checkpoint that cannot be read, or whose arrays differ from the checksums written with them."""


def unused_path(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}.{n}'
  return candidate


def failure_reason(error: Exception) -> str:
  """The error's type and the start of its first line, for one-line reports."""
  first = (str(error).splitlines() or [''])[0].split('. See full TensorStore details')[0]
  return f'{type(error).__name__}: {first[:200]}'


def warn(message: str) -> None:
  """A warning the user must see: on stderr, set apart from library output."""
  print(f'\n*** WARNING: {message}\n', file=sys.stderr, flush=True)


def key_name(key: Any) -> str:
  """One tree path entry ({'a': ..}, [0], .field) as plain text."""
  for attribute in ('key', 'idx', 'name'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def flat_leaves(tree: Any) -> dict[str, Any]:
  """'params/llm/embed/embedding' -> leaf, for trees of arrays, ShapeDtypeStructs or Orbax array metadata."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {'/'.join(key_name(k) for k in path): leaf for path, leaf in leaves}


def differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
  """Entries where a checkpoint's metadata and the config's abstract tree differ, one phrase each, params first."""
  found = [f'{name} missing from the checkpoint (config: {tuple(expected[name].shape)})'
           for name in expected if name not in saved]
  found += [f'{name} in the checkpoint {tuple(saved[name].shape)} but not in the config'
            for name in saved if name not in expected]
  for name in expected.keys() & saved.keys():
    a, b = saved[name], expected[name]
    if tuple(a.shape) != tuple(b.shape) or jnp.dtype(a.dtype) != jnp.dtype(b.dtype):
      found.append(f'{name}: checkpoint {tuple(a.shape)} {jnp.dtype(a.dtype).name}, '
                   f'config {tuple(b.shape)} {jnp.dtype(b.dtype).name}')
  return sorted(found, key=lambda phrase: (not phrase.startswith('params/'), phrase))


def as_unsigned(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 (narrower types widened, wider ones split along a new last axis)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def array_checksum(x: jax.Array) -> jax.Array:
  """Two uint32 sums of the array's bits, plain and weighted by position: any changed or moved value shows."""
  bits = as_unsigned(x)
  position = jnp.zeros(bits.shape, jnp.uint32)
  for axis in range(bits.ndim):
    position = position * jnp.uint32(bits.shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * (2 * position + 1), dtype=jnp.uint32)])


def checksums(tree: Any) -> dict[str, list[int]]:
  """'path' -> [sum, weighted sum] of every array in `tree`, computed where the arrays live."""
  flat = flat_leaves(tree)
  if not flat:
    return {}
  first = next(iter(flat.values()))
  replicated = (NamedSharding(first.sharding.mesh, PartitionSpec())
                if isinstance(first.sharding, NamedSharding) else None)
  sums = jax.jit(lambda leaves: jnp.stack([array_checksum(x) for x in leaves]),
                 out_shardings=replicated)(list(flat.values()))
  return {name: [int(a), int(b)] for name, (a, b) in zip(flat, np.asarray(sums))}


def verify(tree: Any, expected: dict[str, list[int]], prefix: str = '') -> None:
  """Raises CheckpointDamaged naming the first arrays of `tree` whose checksum differs from `expected`."""
  actual = checksums(tree)
  changed = [name for name, value in actual.items() if expected.get(prefix + name, value) != value]
  if changed:
    raise CheckpointDamaged(f'{len(changed)} array(s) differ from the checksums written at save time: '
                            f'{", ".join(changed[:SHOWN_DIFFERENCES])}')


def read_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The saved state's leaves (shape, dtype) by path; CheckpointDamaged when the metadata cannot be read."""
  try:
    tree = manager.item_metadata(step)['state']
  except Exception as error:  # Orbax raises many types for unreadable files.
    raise CheckpointDamaged(f'its metadata cannot be read ({failure_reason(error)})') from error
  if tree is None:
    raise CheckpointDamaged('it has no state metadata')
  return flat_leaves(tree)


def mismatch(name: str, found: list[str]) -> CheckpointMismatch:
  """The error for checkpoint `name` not fitting the config, naming its first differences."""
  return CheckpointMismatch(
      f'checkpoint {name} does not fit the config ({len(found)} difference(s)): '
      f'{"; ".join(found[:SHOWN_DIFFERENCES])}. Train in a new --workdir, or use the config the run was '
      'trained with (its config.json)')


def check_fits(manager: ocp.CheckpointManager, step: int, abstract: Any) -> None:
  """Raises CheckpointMismatch naming the first entries where the checkpoint and `abstract` differ."""
  found = differences(read_metadata(manager, step), flat_leaves(abstract))
  if found:
    raise mismatch(f'{manager.directory}/{step}', found)


def saved_checksums(manager: ocp.CheckpointManager, step: int) -> dict[str, list[int]] | None:
  """The checksums written with `step`; None for a checkpoint saved without them."""
  if not os.path.isdir(os.path.join(manager.directory, str(step), 'checksums')):
    return None
  return manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))['checksums']


class Checkpointer:
  """Saves {state, data iterator, checksums} asynchronously every N steps, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                          item_handlers=handlers(ocp.StandardCheckpointHandler()))

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts an asynchronous save of `state`, the iterator state and the state's checksums at `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        checksums=ocp.args.JsonSave(checksums(state))), force=True)

  def wait(self) -> None:
    """Blocks until pending saves are written; raises what a failed save raised."""
    self.manager.wait_until_finished()

  def committed_steps(self) -> list[int]:
    """The steps whose directories are complete on disk, read afresh (not the manager's cached list)."""
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    return sorted(int(name) for name in names if name.isdigit())

  def latest_step(self) -> int | None:
    """The newest saved step, None when there is none."""
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, data state) of `step`; CheckpointMismatch when it does not fit, CheckpointDamaged when unreadable."""
    check_fits(self.manager, step, abstract_state)
    try:
      expected = saved_checksums(self.manager, step)
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as error:  # Orbax raises many types for unreadable files.
      raise CheckpointDamaged(failure_reason(error)) from error
    if expected is not None:
      verify(restored['state'], expected)
    return restored['state'], restored['data']

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores, as (step, state, data state); None when there is none.

    A checkpoint that does not fit `abstract_state` raises CheckpointMismatch and nothing on disk
    changes. A damaged one (unreadable, or differing from its checksums) is renamed to
    `<step>.damaged` (kept for inspection, never deleted) with a warning, and the previous one is tried.
    """
    self.wait()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, abstract_state)
        return step, state, data_state
      except CheckpointDamaged as error:
        damaged = os.path.join(self.directory, str(step))
        aside = unused_path(f'{damaged}.damaged')
        warn(f'checkpoint {damaged} is damaged ({error}); moved to {aside}; using the previous checkpoint')
        if jax.process_index() == 0:
          os.rename(damaged, aside)
        self.manager.reload()
    return None

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self.manager.close()


@contextlib.contextmanager
def absl_errors_only() -> Iterator[None]:
  """Within it, absl logging (the libraries' channel) shows errors only."""
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A manager over an existing checkpoint directory that never writes to it."""
  options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
  with absl_errors_only():  # Orbax warns "Given directory is read only" for what is asked of it here
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS,
                                 item_handlers=handlers(ocp.PyTreeCheckpointHandler()))


def saved_params(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The saved parameters' metadata (shape, dtype) by path below params/, e.g. 'llm/embed/embedding'."""
  prefix = 'params/'
  return {name[len(prefix):]: leaf for name, leaf in read_metadata(manager, step).items() if name.startswith(prefix)}


# Given a checkpoint's saved parameter metadata and its name, the abstract params to read from it
# (ShapeDtypeStructs with shardings); raises CheckpointMismatch when the checkpoint cannot serve.
ParamsSelector = Callable[[dict[str, Any], str], Any]


def restore_newest_params(directory: str, select: ParamsSelector) -> tuple[int, Any] | None:
  """(step, params) of the newest checkpoint in `directory` whose selected params restore; None when none does.

  Only the params `select` asks for are read (no optimizer state in memory), onto their shardings,
  and checked against their checksums. The directory is opened read-only and nothing is written:
  a checkpoint that does not fit raises CheckpointMismatch; a damaged one is reported and skipped.
  """
  if not os.path.isdir(directory):
    return None
  manager = read_only_manager(directory)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        item = {'params': select(saved_params(manager, step), f'{manager.directory}/{step}')}
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
        try:
          expected = saved_checksums(manager, step)
          params = manager.restore(step, args=args)['state']['params']
        except Exception as error:  # Orbax raises many types for unreadable files.
          raise CheckpointDamaged(failure_reason(error)) from error
        if expected is not None:
          verify(params, expected, prefix='params/')
        return step, params
      except CheckpointDamaged as error:
        warn(f'checkpoint {manager.directory}/{step} is damaged ({error}); using the previous checkpoint')
    return None
  finally:
    manager.close()


def restore_latest_params(directory: str, abstract_params: Any) -> tuple[int, Any] | None:
  """(step, params) of the newest usable checkpoint in `directory`, all of `abstract_params`, read-only."""

  def select(saved: dict[str, Any], name: str) -> Any:
    found = differences(saved, flat_leaves(abstract_params))
    if found:
      raise mismatch(name, found)
    return abstract_params

  return restore_newest_params(directory, select)
