"""The GRPO run's per-step scalars as a JSON-lines file in the workdir, and the reward curve drawn from it."""

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

FILE = 'rl_history.jsonl'
PLOT = 'reward_curve.png'


def append(workdir: str, step: int, scalars: dict[str, float]) -> None:
  """Adds one step's scalars to <workdir>/rl_history.jsonl."""
  with open(os.path.join(workdir, FILE), 'a') as f:
    f.write(json.dumps({'step': step, **scalars}) + '\n')


def read(workdir: str, until: int | None = None) -> list[dict[str, float]]:
  """The recorded steps (those up to `until` when given), oldest first; [] when none."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row for row in rows if until is None or row['step'] <= until]


def truncate(workdir: str, step: int) -> None:
  """Drops records after `step` (a resumed run repeats those steps)."""
  rows = read(workdir, step)
  with open(os.path.join(workdir, FILE), 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)


def plot(workdir: str) -> str | None:
  """Draws each reward component and the sample accuracy per step into <workdir>/reward_curve.png; its path."""
  rows = read(workdir)
  if not rows:
    return None
  steps = [row['step'] for row in rows]
  figure, axis = plt.subplots(figsize=(6, 3.5))
  for key in sorted(k for k in rows[0] if k.startswith('reward/')) + ['sample_accuracy']:
    if key in rows[0]:
      axis.plot(steps, [row[key] for row in rows], label=key.removeprefix('reward/'))
  axis.set_xlabel('GRPO step')
  axis.set_ylabel('mean over samples')
  axis.legend(fontsize=8)
  figure.tight_layout()
  path = os.path.join(workdir, PLOT)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
