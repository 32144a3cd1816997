"""Launch scripts: the exact gcloud, sbatch and srun commands they print in dry-run mode, and run with stand-ins."""

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
TRAIN = ['train', '--config', 'configs/demo.py:modalities=audio,video', '--workdir', '/mnt/runs/a b',
         '--config.train.steps=10']


def launch(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args], env={**os.environ, **(env or {})},
                        capture_output=True, text=True, timeout=60)


def stand_in(directory, name: str, body: str) -> None:
  path = directory / name
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_tpu_pod_dry_run_prints_setup_and_command_for_all_workers():
  result = launch('tpu_pod.sh', '--dry-run', '--name', 'my-pod', '--zone', 'us-east5-a', '--setup', *TRAIN,
                  env={'TMPDIR': '/scratch'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'git -C {ROOT} archive --format=tar.gz -o /scratch/mer_jax.tar.gz HEAD',
      'gcloud compute tpus tpu-vm scp /scratch/mer_jax.tar.gz my-pod:mer_jax.tar.gz --zone=us-east5-a --worker=all',
      "gcloud compute tpus tpu-vm ssh my-pod --zone=us-east5-a --worker=all --command 'mkdir -p mer_jax && "
      'tar -xzf mer_jax.tar.gz -C mer_jax && cd mer_jax && curl -LsSf https://astral.sh/uv/install.sh | sh && '
      'export PATH=$HOME/.local/bin:$PATH && { [ -d .venv ] || uv venv --python 3.11 .venv; } && '
      'uv pip install --python .venv/bin/python -e . "jax[tpu]"\'',
      "gcloud compute tpus tpu-vm ssh my-pod --zone=us-east5-a --worker=all --command 'cd mer_jax && "
      ".venv/bin/mer-jax train --config configs/demo.py:modalities=audio,video --workdir '\\''/mnt/runs/a b'\\'' "
      "--config.train.steps=10'",
  ]


def test_tpu_multislice_dry_run_reaches_every_node():
  result = launch('tpu_pod.sh', '--name', 'my-qr', '--zone', 'us-east5-a', '--project', 'proj', '--multislice',
                  'train', '--workdir', '/mnt/runs/x', env={'DRY_RUN': '1', 'REMOTE_DIR': 'code'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      'gcloud compute tpus queued-resources ssh my-qr --zone=us-east5-a --worker=all --node=all --project=proj '
      "--command 'cd code && .venv/bin/mer-jax train --workdir /mnt/runs/x'"]


def test_tpu_pod_remote_command_keeps_every_flag(tmp_path):
  """With a stand-in gcloud that runs --command in a shell, the worker's mer-jax gets the flags unchanged."""
  bin_dir, home = tmp_path / 'bin', tmp_path / 'home'
  bin_dir.mkdir()
  (home / 'mer_jax' / '.venv' / 'bin').mkdir(parents=True)
  stand_in(bin_dir, 'gcloud', 'while [ "$1" != --command ]; do shift; done\ncd "$HOME" && bash -c "$2"\n')
  stand_in(home / 'mer_jax' / '.venv' / 'bin', 'mer-jax', 'printf "%s\\n" "$@"\n')
  result = launch('tpu_pod.sh', '--name', 'my-pod', '--zone', 'z', *TRAIN, '--config.data.dir=it\'s here',
                  env={'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'HOME': str(home)})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [*TRAIN, "--config.data.dir=it's here"]


def test_tpu_pod_needs_name_zone_and_a_command():
  assert launch('tpu_pod.sh', '--zone', 'z', 'train').returncode == 2
  assert launch('tpu_pod.sh', '--name', 'n', '--zone', 'z').returncode == 2


def test_slurm_dry_run_one_task_per_gpu():
  result = launch('slurm.sh', '--dry-run', '--nodes', '2', '--partition', 'gpu', '--time', '04:00:00', *TRAIN)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --partition=gpu --time=04:00:00 '
      f"{LAUNCH}/slurm_gpu.sbatch train --config configs/demo.py:modalities=audio,video --workdir '/mnt/runs/a b' "
      '--config.train.steps=10']


def test_slurm_one_task_per_node_exports_all_gpus(tmp_path):
  stand_in(tmp_path, 'sbatch', 'echo "devices=$JAX_LOCAL_DEVICE_IDS"\nprintf "%s\\n" "$@"\n')
  args = ['--nodes', '4', '--gpus-per-node', '4', '--tasks-per', 'node', 'train', '--workdir', '/shared/x']
  dry = launch('slurm.sh', *args, env={'DRY_RUN': '1'})
  assert dry.stdout.splitlines() == [
      f'env JAX_LOCAL_DEVICE_IDS=0,1,2,3 sbatch --nodes=4 --gpus-per-node=4 --ntasks-per-node=1 '
      f'{LAUNCH}/slurm_gpu.sbatch train --workdir /shared/x']
  submitted = launch('slurm.sh', *args, env={'PATH': f'{tmp_path}:{os.environ["PATH"]}'})
  assert submitted.returncode == 0, submitted.stderr
  assert submitted.stdout.splitlines() == [
      'devices=0,1,2,3', '--nodes=4', '--gpus-per-node=4', '--ntasks-per-node=1', f'{LAUNCH}/slurm_gpu.sbatch',
      'train', '--workdir', '/shared/x']


def test_sbatch_script_runs_srun_with_the_command():
  result = launch('slurm_gpu.sbatch', 'train', '--config', 'configs/demo.py:variant=tiny', '--workdir', '/runs/a b',
                  env={'DRY_RUN': '1', 'MER_JAX': '/shared/venv/bin/mer-jax'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      'srun --kill-on-bad-exit=1 /shared/venv/bin/mer-jax train --config configs/demo.py:variant=tiny '
      '--workdir /runs/a\\ b']
  with open(os.path.join(LAUNCH, 'slurm_gpu.sbatch')) as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  assert directives[:4] == ['--job-name=mer-jax', '--nodes=1', '--gpus-per-node=8', '--ntasks-per-node=8']
