"""Clear start-up errors for config overrides that name keys the config does not have."""

import importlib.util
from types import ModuleType
from typing import Any, Sequence

from ml_collections import ConfigDict


def config_argument(argv: Sequence[str]) -> str | None:
  """The value of --config in argv ('file.py' or 'file.py:arg'), if any."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_module(path: str) -> ModuleType:
  """Executes the config file at `path` and returns it as a module."""
  module_spec = importlib.util.spec_from_file_location('mer_jax_user_config', path)
  if module_spec is None or module_spec.loader is None:
    raise ValueError(f'cannot load config file {path}')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ConfigDict:
  """Calls get_config(arg) of the file named by 'path.py[:arg]'."""
  path, _, arg = spec.partition(':')
  return load_module(path).get_config(arg or None)


def unknown_override_keys(config: ConfigDict, argv: Sequence[str]) -> list[str]:
  """Messages for each --config.a.b=... override whose key path is not in `config`."""
  problems = []
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node: Any = config
    walked = []
    for part in path.split('.'):
      if not isinstance(node, ConfigDict) or part not in node:
        valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
        where = 'config' + ''.join(f'.{w}' for w in walked)
        problems.append(f'unknown config key {path!r}: {where} has no {part!r}; valid keys: {", ".join(valid)}')
        break
      walked.append(part)
      node = node[part]
  return problems
