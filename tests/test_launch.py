"""Launch scripts: the exact commands their dry runs print, bad options, and runs on stand-in clusters."""

import importlib.metadata
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
TRAIN = ['train', '--config', 'configs/demo.py:modalities=audio,video', '--workdir', '/mnt/runs/a b',
         '--config.train.steps=10']
USAGE_EXIT = 2
LOCKFILE = '/tmp/libtpu_lockfile'
# gcloud's `tpu-vm ssh/scp --worker=all` on directories that stand for the workers (each one's home): each
# worker's command runs in a session of its own, so that stopping the local gcloud leaves it running, as on a pod.
STAND_IN_GCLOUD = r'''
[ "$1 $2 $3" = 'compute tpus tpu-vm' ] || { echo "unexpected gcloud call: $*" >&2; exit 64; }
action=$4
shift 4
case $action in
  ssh)
    node=$1
    while [ "$1" != --command ]; do shift; done
    echo "ssh $node $2" >> "$CLUSTER/calls.log"
    pids=() status=0
    for home in "$CLUSTER/$node"/w*; do
      (cd "$home" && HOME=$home TPU_WORKER_ID=${home##*/w} exec setsid -w bash -c "$2") &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    exit $status ;;
  scp)
    files=()
    while [[ $1 != *: ]]; do files+=("$1"); shift; done
    echo "scp ${1%:}" >> "$CLUSTER/calls.log"
    for home in "$CLUSTER/${1%:}"/w*; do cp "${files[@]}" "$home/"; done ;;
esac
'''
# A stand-in trainer: prints its arguments and XLA_FLAGS; `fail` fails on slice 1's worker 1 and waits forever
# elsewhere (as the others would wait in a collective); `stale` waits forever.
STAND_IN_MER_JAX = r'''
node=$(basename "$(dirname "$HOME")")
if [ "$1" = stale ] || { [ "$1" = fail ] && [ "$node-$TPU_WORKER_ID" != qr-1-1 ]; }; then
  while :; do sleep 0.1; done
fi
echo "worker $TPU_WORKER_ID of $node: XLA_FLAGS=$XLA_FLAGS"
printf '%s\n' "$@"
if [ "$1" = fail ]; then
  echo boom >&2
  exit 3
fi
'''


def launch(script: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args], env={**os.environ, **(env or {})},
                        capture_output=True, text=True, timeout=timeout)


def stand_in(path, body: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def usage_failure(result: subprocess.CompletedProcess) -> str:
  """The message line of a usage error (the line before the usage)."""
  assert result.returncode == USAGE_EXIT, result.stderr
  lines = result.stderr.splitlines()
  assert lines[-1].startswith('usage: ')
  return lines[-2]


# ---- TPU pods: dry runs and options


def test_tpu_dry_run_prints_setup_stop_and_run_with_quoted_remote_paths(tmp_path):
  wheels = tmp_path / 'wheelhouse'
  wheels.mkdir()
  (wheels / 'requirements.lock').write_text('jax==0.10.2\n')
  result = launch('tpu_pod.sh', '--dry-run', '--name', 'my-pod', '--zone=us-east5-a', '--project', 'proj',
                  '--internal-ip', '--env', 'LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true',
                  '--env=XLA_FLAGS=--xla_dump_to=/tmp/dumps a', '--setup', '--wheels', str(wheels), *TRAIN,
                  env={'TMPDIR': '/scratch', 'REMOTE_DIR': 'my code'})
  assert result.returncode == 0, result.stderr
  where = '--zone=us-east5-a --project=proj --internal-ip'
  assert result.stdout.splitlines() == [
      f'git -C {ROOT} archive --format=tar.gz -o /scratch/mer_jax-code.tar.gz HEAD',
      f'tar -cf /scratch/mer_jax-wheelhouse.tar -C {wheels} .',
      f'gcloud compute tpus tpu-vm scp /scratch/mer_jax-code.tar.gz /scratch/mer_jax-wheelhouse.tar my-pod: {where} '
      '--worker=all',
      f"gcloud compute tpus tpu-vm ssh my-pod {where} --worker=all --command 'mkdir -p '\\''my code'\\'' && "
      "tar -xzf mer_jax-code.tar.gz -C '\\''my code'\\'' && "
      "bash '\\''my code/launch/tpu_worker.sh'\\'' install mer_jax-wheelhouse.tar && "
      "rm -f mer_jax-code.tar.gz mer_jax-wheelhouse.tar'",
      f"gcloud compute tpus tpu-vm ssh my-pod {where} --worker=all --command 'bash '\\''my code/launch/tpu_worker.sh'"
      "\\'' stop'",
      f"gcloud compute tpus tpu-vm ssh my-pod {where} --worker=all --command 'bash '\\''my code/launch/tpu_worker.sh'"
      "\\'' run LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true '\\''XLA_FLAGS=--xla_dump_to=/tmp/dumps a'"
      "\\'' -- train --config configs/demo.py:modalities=audio,video --workdir '\\''/mnt/runs/a b'\\'' "
      "--config.train.steps=10'",
  ]


def test_tpu_dry_run_builds_a_missing_wheelhouse_first(tmp_path):
  result = launch('tpu_pod.sh', '--name', 'n', '--zone', 'z', '--setup', '--wheels', str(tmp_path / 'none'),
                  env={'DRY_RUN': '1', 'TMPDIR': '/scratch'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == f'bash {LAUNCH}/wheelhouse.sh {tmp_path}/none tpu'
  assert len(result.stdout.splitlines()) == 5  # wheelhouse, git archive, tar, scp, install: no run


def test_tpu_multislice_dry_run_stops_then_runs_one_ssh_per_slice():
  result = launch('tpu_pod.sh', '--name', 'my-qr', '--zone', 'us-east5-a', '--slices', '3', '--node-prefix',
                  'slice', 'train', '--workdir', '/mnt/runs/x', env={'DRY_RUN': '1'})
  assert result.returncode == 0, result.stderr
  ssh = 'gcloud compute tpus tpu-vm ssh'
  assert result.stdout.splitlines() == [
      *[f"{ssh} slice-{i} --zone=us-east5-a --worker=all --command 'bash mer_jax/launch/tpu_worker.sh stop'"
        for i in range(3)],
      *[f"{ssh} slice-{i} --zone=us-east5-a --worker=all --command 'bash mer_jax/launch/tpu_worker.sh run -- "
        "train --workdir /mnt/runs/x'" for i in range(3)]]


@pytest.mark.parametrize('args,message', [
    (['--zone', 'z', 'train'], '--name and --zone are required'),
    (['--name', 'n', '--zone', 'z'], 'give a mer-jax COMMAND, --setup, or both'),
    (['--name', 'n', '--zone'], '--zone needs a value'),
    (['--name', 'n', '--zone', 'z', '--slices', 'two', 'train'], '--slices takes a number of slices, not two'),
    (['--name', 'n', '--zone', 'z', '--node-prefix', 'p', 'train'],
     '--node-prefix names the slices of a multislice job: give --slices N too'),
    (['--name', 'n', '--zone', 'z', '--env', 'XLA_FLAGS', 'train'], '--env takes KEY=VALUE, not XLA_FLAGS'),
    (['--name', 'n', '--zone', 'z', '--multislice', 'train'], 'unknown option --multislice'),
])
def test_tpu_pod_rejects_bad_options(args, message):
  assert usage_failure(launch('tpu_pod.sh', '--dry-run', *args)) == message


# ---- TPU pods: runs on a stand-in cluster


@pytest.fixture()
def cluster(tmp_path):
  """Two slices (qr-0, qr-1) of two workers, each holding a checkout with a stand-in .venv/bin/mer-jax."""
  root = tmp_path / 'cluster'
  for node in ('qr-0', 'qr-1'):
    for worker in (0, 1):
      code = root / node / f'w{worker}' / 'mer_jax'
      (code / 'launch').mkdir(parents=True)
      shutil.copy(os.path.join(LAUNCH, 'tpu_worker.sh'), code / 'launch')
      stand_in(code / '.venv' / 'bin' / 'mer-jax', STAND_IN_MER_JAX)
  stand_in(tmp_path / 'bin' / 'gcloud', STAND_IN_GCLOUD)
  yield {'root': root, 'logs': tmp_path / 'logs',
         'env': {'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}', 'CLUSTER': str(root), 'XLA_FLAGS': ''}}
  for pid in trainers_left(root):  # only after a failed test: the stand-in trainers this test started
    os.kill(int(pid), signal.SIGKILL)


def trainers_left(root) -> list[str]:
  found = subprocess.run(['pgrep', '-f', f'{root}/.*/[.]venv/bin/mer-jax'], capture_output=True, text=True)
  return found.stdout.split()


def trainers_once_settled(root, count: int, seconds: float = 30) -> list[str]:
  """trainers_left once it shows `count` processes (a starting one may briefly show its launcher too)."""
  deadline = time.monotonic() + seconds
  while len(trainers_left(root)) != count and time.monotonic() < deadline:
    time.sleep(0.1)
  return trainers_left(root)


def test_tpu_run_stops_stale_trainers_logs_every_worker_and_echoes_worker_zero(cluster):
  stale = cluster['root'] / 'qr-1' / 'w0' / 'mer_jax' / '.venv' / 'bin' / 'mer-jax'
  subprocess.run(['bash', '-c', f'HOME={stale.parents[3]} setsid bash {stale} stale > /dev/null 2>&1 &'], check=True)
  open(LOCKFILE, 'a').close()
  assert len(trainers_once_settled(cluster['root'], 1)) == 1
  result = launch('tpu_pod.sh', '--name', 'qr', '--zone', 'z', '--slices', '2', '--log-dir', str(cluster['logs']),
                  '--env', 'XLA_FLAGS=--a=1 --b=2', *TRAIN, "--config.data.dir=it's here", env=cluster['env'])
  assert result.returncode == 0, result.stderr
  args = [*TRAIN, "--config.data.dir=it's here"]
  assert result.stdout.splitlines() == [
      f'logs in {cluster["logs"]}', 'worker 0 of qr-0: XLA_FLAGS=--a=1 --b=2', *args,
      f'done on all workers of qr-0 qr-1; logs in {cluster["logs"]}']
  for node in ('qr-0', 'qr-1'):
    for worker in (0, 1):
      log = (cluster['logs'] / f'{node}-worker-{worker}.log').read_text().splitlines()
      assert log == [f'worker {worker} of {node}: XLA_FLAGS=--a=1 --b=2', *args]
  calls = (cluster['root'] / 'calls.log').read_text().splitlines()
  stop = 'bash mer_jax/launch/tpu_worker.sh stop'
  assert sorted(calls[:2]) == [f'ssh qr-0 {stop}', f'ssh qr-1 {stop}']
  assert sorted(call.split()[1] for call in calls[2:]) == ['qr-0', 'qr-1']
  assert trainers_left(cluster['root']) == []
  assert not os.path.exists(LOCKFILE)


def test_tpu_run_fails_fast_and_stops_every_worker(cluster):
  result = launch('tpu_pod.sh', '--name', 'qr', '--zone', 'z', '--slices', '2', '--log-dir', str(cluster['logs']),
                  'fail', '--workdir', '/x', env=cluster['env'])
  assert result.returncode == 3, result.stderr
  log = cluster['logs'] / 'qr-1-worker-1.log'
  assert result.stderr.splitlines()[:5] == [
      f'mer-jax failed on qr-1 worker 1 with exit status 3; the end of {log}:',
      '  worker 1 of qr-1: XLA_FLAGS=', '  fail', '  --workdir', '  /x']
  assert '  boom' in result.stderr.splitlines()
  assert f'stopping mer-jax on every worker; logs in {cluster["logs"]}' in result.stderr
  calls = (cluster['root'] / 'calls.log').read_text().splitlines()
  assert [call.split()[-1] for call in calls[-2:]] == ['stop', 'stop']
  assert trainers_left(cluster['root']) == []


def default_ctrl_c() -> None:
  """Gives the launched script a terminal's Ctrl-C: a shell that starts with SIGINT ignored cannot trap it."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_tpu_ctrl_c_stops_every_worker(cluster):
  process = subprocess.Popen(
      ['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), '--name', 'qr-0', '--zone', 'z', '--log-dir',
       str(cluster['logs']), 'stale'], env={**os.environ, **cluster['env']}, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c)
  assert len(trainers_once_settled(cluster['root'], 2)) == 2
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  assert trainers_left(cluster['root']) == []


def repack(distribution: str, wheel_dir) -> None:
  """A wheel of an installed distribution, packed again from its files (nothing is downloaded)."""
  installed = importlib.metadata.distribution(distribution)
  unpacked = wheel_dir.parent / f'{distribution}-unpacked'
  for file in installed.files:
    if file.parts[0] != '..' and '__pycache__' not in file.parts:
      (unpacked / file).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(installed.locate_file(file), unpacked / file)
  wheel_dir.mkdir(parents=True, exist_ok=True)
  subprocess.run([sys.executable, '-m', 'wheel', 'pack', str(unpacked), '-d', str(wheel_dir)], check=True,
                 capture_output=True)


def test_tpu_setup_installs_pinned_wheels_without_an_index(tmp_path, cluster):
  """--setup of a committed checkout: every worker gets the wheelhouse's pinned versions, with no index."""
  repo = tmp_path / 'repo'
  (repo / 'launch').mkdir(parents=True)
  for script in ('common.sh', 'tpu_pod.sh', 'tpu_worker.sh'):
    shutil.copy(os.path.join(LAUNCH, script), repo / 'launch')
  (repo / 'tinyapp').mkdir()
  (repo / 'tinyapp' / '__init__.py').write_text('NAME = "tinyapp"\n')
  (repo / 'pyproject.toml').write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                       'build-backend = "setuptools.build_meta"\n[project]\nname = "tinyapp"\n'
                                       'version = "0.1"\n[tool.setuptools]\npackages = ["tinyapp"]\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'tiny'], check=True)
  wheels = tmp_path / 'wheelhouse'
  repack('setuptools', wheels / 'wheels')
  dependency = tmp_path / 'tinydep'
  (dependency / 'tinydep').mkdir(parents=True)
  (dependency / 'tinydep' / '__init__.py').write_text('VERSION = "1.0"\n')
  (dependency / 'pyproject.toml').write_text('[project]\nname = "tinydep"\nversion = "1.0"\n')
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                  '--wheel-dir', str(wheels / 'wheels'), str(dependency)], check=True)
  setuptools_version = importlib.metadata.version('setuptools')
  (wheels / 'requirements.lock').write_text(f'setuptools=={setuptools_version}\ntinydep==1.0\n')
  (wheels / 'python' / 'bin').mkdir(parents=True)
  os.symlink(os.path.realpath(sys.executable), wheels / 'python' / 'bin' / 'python3')
  result = subprocess.run(
      ['bash', str(repo / 'launch' / 'tpu_pod.sh'), '--name', 'qr-0', '--zone', 'z', '--setup', '--wheels',
       str(wheels), '--log-dir', str(cluster['logs'])],
      env={**os.environ, **cluster['env'], 'TMPDIR': str(tmp_path), 'PIP_INDEX_URL': 'http://127.0.0.1:9/'},
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr + (cluster['logs'] / 'qr-0.setup.log').read_text()
  for home in [cluster['root'] / 'qr-0' / f'w{w}' for w in (0, 1)]:
    python = home / 'mer_jax' / '.venv' / 'bin' / 'python'
    imported = subprocess.run(
        [str(python), '-c', 'import importlib.metadata as m, tinyapp, tinydep; '
         'print(tinyapp.NAME, tinydep.VERSION, m.version("setuptools"))'],
        cwd=home, capture_output=True, text=True, check=True)
    assert imported.stdout == f'tinyapp 1.0 {setuptools_version}\n'
    assert not [name for name in os.listdir(home) if name.startswith('mer_jax-')]  # the archives are gone


# ---- SLURM


def test_slurm_passes_every_other_option_to_sbatch():
  result = launch('slurm.sh', '--dry-run', '--nodes', '2', '--gpus-per-node=h100:8', '--qos', 'high',
                  '--constraint=h100&ib', '--mem', '200G', '--exclusive', '-p', 'gpu', '-t1:00:00', '--account', 'a b',
                  *TRAIN)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "sbatch --nodes=2 --gpus-per-node=h100:8 --ntasks-per-node=8 --cpus-per-task=8 --qos=high '--constraint=h100&ib' "
      f"--mem=200G --exclusive -p gpu -t1:00:00 '--account=a b' {LAUNCH}/slurm_gpu.sbatch train "
      "--config configs/demo.py:modalities=audio,video --workdir '/mnt/runs/a b' --config.train.steps=10"]


def test_slurm_takes_the_command_after_a_double_dash():
  result = launch('slurm.sh', '--dry-run', '-N2', '--wait', '--cpus-per-task', '12', '--', *TRAIN[:1])
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=12 --wait '
      f'{LAUNCH}/slurm_gpu.sbatch train']


def test_slurm_one_task_per_node_exports_all_gpus(tmp_path):
  stand_in(tmp_path / 'sbatch', 'echo "devices=$JAX_LOCAL_DEVICE_IDS"\nprintf "%s\\n" "$@"\n')
  args = ['--nodes', '4', '--gpus-per-node', 'a100:4', '--tasks-per', 'node', 'train', '--workdir', '/shared/x']
  dry = launch('slurm.sh', *args, env={'DRY_RUN': '1'})
  assert dry.stdout.splitlines() == [
      f'env JAX_LOCAL_DEVICE_IDS=0,1,2,3 sbatch --nodes=4 --gpus-per-node=a100:4 --ntasks-per-node=1 '
      f'--cpus-per-task=32 {LAUNCH}/slurm_gpu.sbatch train --workdir /shared/x']
  submitted = launch('slurm.sh', *args, env={'PATH': f'{tmp_path}:{os.environ["PATH"]}'})
  assert submitted.returncode == 0, submitted.stderr
  assert submitted.stdout.splitlines() == [
      'devices=0,1,2,3', '--nodes=4', '--gpus-per-node=a100:4', '--ntasks-per-node=1', '--cpus-per-task=32',
      f'{LAUNCH}/slurm_gpu.sbatch', 'train', '--workdir', '/shared/x']


@pytest.mark.parametrize('args,message', [
    (['--qos', 'high'], 'no mer-jax COMMAND after the options'),
    (['--qos'], '--qos needs a value'),
    (['--nodes', 'two', 'train'], '--nodes takes a number of nodes, not two'),
    (['--gpus-per-node', 'h100', 'train'], '--gpus-per-node takes [TYPE:]COUNT, e.g. 8 or h100:8, not h100'),
    (['--gpus-per-node=h100:0', 'train'], '--gpus-per-node takes [TYPE:]COUNT, e.g. 8 or h100:8, not h100:0'),
    (['--tasks-per', 'socket', 'train'], '--tasks-per is gpu or node, not socket'),
    (['--cpus-per-task=many', 'train'], '--cpus-per-task takes a number of CPUs, not many'),
])
def test_slurm_rejects_bad_options(args, message):
  assert usage_failure(launch('slurm.sh', '--dry-run', *args)) == message


def test_sbatch_script_runs_srun_with_the_jobs_cpus_per_task():
  args = ['train', '--config', 'configs/demo.py:variant=tiny', '--workdir', '/runs/a b']
  env = {'DRY_RUN': '1', 'MER_JAX': '/shared/venv/bin/mer-jax'}
  result = launch('slurm_gpu.sbatch', *args, env={**env, 'SLURM_CPUS_PER_TASK': '12'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      'srun --kill-on-bad-exit=1 --cpus-per-task=12 /shared/venv/bin/mer-jax train '
      '--config configs/demo.py:variant=tiny --workdir /runs/a\\ b']
  without_cpus = launch('slurm_gpu.sbatch', 'train', env=env)
  assert without_cpus.stdout == 'srun --kill-on-bad-exit=1 /shared/venv/bin/mer-jax train\n'
  with open(os.path.join(LAUNCH, 'slurm_gpu.sbatch')) as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  assert directives[:5] == ['--job-name=mer-jax', '--nodes=1', '--gpus-per-node=8', '--ntasks-per-node=8',
                            '--cpus-per-task=8']


# ---- several local processes


def test_local_dry_run_prints_pasteable_commands():
  for args, env in ((['--dry-run', '2'], {}), (['2'], {'DRY_RUN': '1'})):
    result = launch('local.sh', *args, 'train', '--workdir', 'runs/a b',
                    env={**env, 'XLA_FLAGS': '--xla_x=1', 'DEVICES_PER_PROCESS': '2', 'PORT': '1234'})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"env 'XLA_FLAGS=--xla_x=1 --xla_force_host_platform_device_count=2' mer-jax train --workdir 'runs/a b' "
        f'--coordinator_address=localhost:1234 --num_processes=2 --process_id={i}' for i in (0, 1)]


def test_local_processes_stop_when_one_fails(tmp_path):
  stand_in(tmp_path / 'trainer', 'case "$*" in *--process_id=1*) exit 4 ;; esac\nwhile :; do sleep 0.1; done\n')
  result = launch('local.sh', '3', 'train', env={'MER_JAX': str(tmp_path / 'trainer')})
  assert result.returncode == 4
  assert subprocess.run(['pgrep', '-f', str(tmp_path)], capture_output=True).stdout == b''


@pytest.mark.parametrize('args,message', [
    (['train'], 'give the number of processes and a mer-jax COMMAND'),
    (['two', 'train'], 'N is a number of processes, not two'),
    (['--dry-run', '0', 'train'], 'N is a number of processes, not 0'),
])
def test_local_rejects_bad_process_counts(args, message):
  assert usage_failure(launch('local.sh', *args)) == message
