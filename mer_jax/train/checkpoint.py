"""Orbax checkpoints of the train state and the Grain iterator position, with fallback past damaged steps."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def unused_path(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}.{n}'
  return candidate


def failure_reason(error: Exception) -> str:
  """The error's type and the start of its first line, for one-line reports."""
  return f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'


class Checkpointer:
  """Saves {state, data iterator} asynchronously every N steps, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data'))

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts an asynchronous save of `state` and the iterator state at `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores, as (step, state, data state); damaged ones are set aside.

    A step that fails to restore is reported, renamed to `<step>.damaged` (kept for inspection,
    never deleted) and the previous step is tried.
    """
    self.manager.wait_until_finished()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return step, restored['state'], restored['data']
      except Exception as error:  # Orbax raises many types for unreadable files.
        damaged = os.path.join(self.directory, str(step))
        aside = unused_path(f'{damaged}.damaged')
        print(f'WARNING: checkpoint {damaged} is damaged ({failure_reason(error)}); moved to {aside}; '
              'trying the previous checkpoint', flush=True)
        if jax.process_index() == 0:
          os.rename(damaged, aside)
        self.manager.reload()
    return None

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self.manager.close()


def restore_latest_params(directory: str, abstract_params: Any) -> tuple[int, Any] | None:
  """(step, params) of the newest checkpoint in `directory` whose params restore; None when none does.

  Only the params are read (no optimizer state), onto the shardings of `abstract_params`. The
  directory is opened read-only: a step that fails is reported and skipped, never moved.
  """
  if not os.path.isdir(directory):
    return None
  options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
  manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=('state', 'data'))
  item = {'params': abstract_params}
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return step, manager.restore(step, args=args)['state']['params']
      except Exception as error:  # Orbax raises many types for unreadable files.
        print(f'WARNING: checkpoint {directory}/{step} does not restore ({failure_reason(error)}); '
              'trying the previous checkpoint', flush=True)
    return None
  finally:
    manager.close()
