"""Command-line entry: mer-jax {synth,prepare,show,train,evaluate,predict,bench,describe,sweep,convert,export,seeds,
corrupt,pseudo-label}."""

import json
import os
import sys
from typing import TYPE_CHECKING

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from mer_jax import config_check

if TYPE_CHECKING:
  from mer_jax.eval.wheel import Wheels

COMMANDS = ('synth', 'prepare', 'show', 'train', 'evaluate', 'bench', 'describe', 'predict', 'sweep', 'convert', 'export',
            'seeds', 'corrupt', 'pseudo-label')
POSITIONAL_COMMANDS = ('predict', 'seeds')  # commands that take file or directory arguments
# Commands that run as one job over all the processes of a launch (unless they only --print); the others
# refuse a launch of several.
MULTI_PROCESS_COMMANDS = ('train', 'sweep')
FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/demo.py:modalities=audio.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config.json, checkpoints/, TensorBoard events, eval/.')
flags.DEFINE_string('out', None, 'Output directory (synth, prepare, convert, export; evaluate --bundle: '
                    'where reports go, default <bundle>/eval).')
flags.DEFINE_string('raw', None, 'Raw dataset directory (prepare).')
flags.DEFINE_string('format', 'mer2023', 'Raw dataset layout (prepare). For export: bundle (an inference '
                    'bundle, the default there) or hf (the LLM backbone, LoRA merged, as a transformers directory).')
flags.DEFINE_integer('num_clips', 1000, 'Number of synthetic clips (synth).')
flags.DEFINE_integer('seed', 0, 'Seed of the synthetic dataset (synth).')
flags.DEFINE_integer('num_frames', 4, 'Frames sampled evenly from each clip (prepare, bench).')
flags.DEFINE_integer('frame_size', 48, 'Frame height and width after resizing (prepare).')
flags.DEFINE_float('duration', 2.0, 'Seconds of audio kept per clip, trimmed or padded (prepare, bench).')
flags.DEFINE_string('tokenizer', None, "A pretrained LLM's tokenizer.json; default trains one on the data (prepare).")
flags.DEFINE_string('split', 'test', 'Split to evaluate or show: a prepared split (TFDS slices such as test[:10%] '
                    'allowed), or val (evaluate).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 for a multi-process job '
                    '(SLURM and TPU pods are detected without it).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in the job (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process\'s index (with --coordinator_address).')
flags.DEFINE_enum('what', 'decode', ['decode', 'import', 'train', 'data', 'eval'], 'What to benchmark (bench).')
for _name, _default, _help in [('width', 512, 'LLM width'), ('layers', 4, 'LLM layers'), ('heads', 8, 'query heads'),
                               ('kv_heads', 8, 'key/value heads'), ('seq', 512, 'sequence length'),
                               ('batch', 4, 'sequences per step'), ('vocab', 8192, 'vocabulary size'),
                               ('loss_chunk', 0, 'positions per cross-entropy chunk (0: all)'),
                               ('steps', 2, 'steps per timed run'), ('repeats', 5, 'timed runs, alternating'),
                               ('threads', 2, "torch's intra-op threads")]:
  flags.DEFINE_integer(_name, _default, f'{_help} (bench --what train without --config; steps/repeats: train/data/eval).')
flags.DEFINE_list('attention', ['flash'], 'Attention kinds to time side by side (bench --what train).')
flags.DEFINE_enum('vs', None, ['torch'], 'Also time transformers + torch AdamW at the same dimensions (bench --what train).')
flags.DEFINE_string('hf', None, 'A Hugging Face checkpoint directory (convert, bench --what import).')
flags.DEFINE_enum('component', 'llm', ['llm', 'audio', 'vision'], 'Which model part the checkpoint holds (convert).')
flags.DEFINE_enum('dtype', None, ['bfloat16', 'float32'], 'Parameter dtype to load the LLM in '
                  '(bench --what import); the exported weights\' dtype (export); default bfloat16. The compute '
                  'dtype of bench --what train (default float32).')
flags.DEFINE_string('bundle', None, 'An inference bundle written by `mer-jax export`, instead of --workdir '
                    '(predict, evaluate).')
flags.DEFINE_string('data', None, 'A prepared dataset: to show (show), or to evaluate a run or bundle on '
                    '(evaluate; default: the data.dir of the run\'s or the bundle\'s config).')
flags.DEFINE_float('random_gb', 0.0, 'First write a random LLaMA-shaped bfloat16 checkpoint of about this many '
                   'GB into --hf, which must not exist (bench --what import).')
flags.DEFINE_integer('iterations', 10, 'Timed calls per measurement, after one compiling call (bench).')
flags.DEFINE_bool('json', False, 'Print one JSON document instead of a table (predict, show).')
flags.DEFINE_string('transcript', None, 'Transcript given to every clip\'s prompt (predict).')
flags.DEFINE_string('transcripts', None, 'CSV with name,sentence columns; name is the clip file name without '
                    'extension (predict).')
flags.DEFINE_string('label_map', None, 'Label map of the raw dataset (prepare --format iemocap: iemocap4, the default, '
                    'or iemocap6).')
flags.DEFINE_enum('language', 'english', ['english', 'chinese'], 'Transcript language (prepare --format '
                  'mer2024/mer2025).')
flags.DEFINE_string('wheels', None, 'Emotion-wheel folder (wheel1..5.xlsx, synonym.xlsx, format.csv) for '
                    'open-vocabulary scores as the MER2025 OV track computes them (evaluate).')
flags.DEFINE_string('suite', None, 'A suite file listing datasets and splits to evaluate one run on (evaluate).')
flags.DEFINE_integer('workers', 2, 'Processes that decode clips (prepare).')
flags.DEFINE_integer('limit', None, 'Show at most this many examples (show).')
flags.DEFINE_bool('compile', False, 'Compile the train step ahead of time on as many fake CPU devices as the '
                  'mesh has and report its real per-device memory, collectives and partitioning (describe).')
flags.DEFINE_string('hbm_gb', 'h100', 'Accelerator memory per chip for describe --compile: GB, or v5p, v6e, h100, h200.')
flags.DEFINE_float('threshold', 0.9, 'Keep a clip whose top label probability is at least this (pseudo-label).')
flags.DEFINE_integer('per_class', None, 'Keep at most this many clips per label, most confident first (pseudo-label).')
flags.DEFINE_string('agree', None, 'A second run that must give the same label (pseudo-label).')
flags.DEFINE_bool('hide_labels', False, 'Label a split that has labels as if it had none (pseudo-label).')
flags.DEFINE_enum('drop', None, ['audio', 'video', 'text'], 'Evaluate with this modality missing from every clip '
                  '(evaluate; reports in eval/[<data name>/]drop-<modality>/, which seeds reads with the same flag).')
flags.DEFINE_enum('protocol', 'mer-noise', ['mer-noise'], 'Corruption protocol (corrupt).')
flags.DEFINE_string('snr', '5,10', 'Audio SNRs in dB, one drawn per clip (corrupt).')
flags.DEFINE_string('blur', '1,2,4', 'Video downscaling factors, one drawn per clip (corrupt).')
flags.DEFINE_string('noise', None, 'A folder of noise audio files (corrupt; default: generated coloured noise).')
flags.DEFINE_bool('print', False, 'Print one `mer-jax train` command per point instead of running them (sweep).')


def require(command: str, *names: str) -> None:
  """Fails with a usage message when a flag the command needs is missing."""
  missing = [f'--{n}' for n in names if getattr(FLAGS, n) is None]
  if missing:
    raise app.UsageError(f'mer-jax {command} needs {", ".join(missing)}')


def join_job(command: str) -> None:
  """Joins the job's other processes (jax.distributed) or exits saying why not; reports a multi-process job's size."""
  from mer_jax.train import distributed
  multi_process = command in MULTI_PROCESS_COMMANDS and not FLAGS.print
  try:
    joined = distributed.join_job(command, multi_process, FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  except distributed.LaunchError as error:
    sys.exit(f'error: {error}')
  if multi_process:
    import jax
    if jax.process_index() == 0:
      print(f'{jax.process_count()} process(es) ({joined}), {jax.device_count()} devices')


def run_synth() -> None:
  """mer-jax synth --out DIR: writes the demo dataset as real mp4 files in the MER2023 layout."""
  from mer_jax.data import synthetic
  require('synth', 'out')
  summary = synthetic.write_dataset(FLAGS.out, num_clips=FLAGS.num_clips, seed=FLAGS.seed)
  print(json.dumps(summary, indent=2))


def run_prepare() -> None:
  """mer-jax prepare --format F --raw DIR --out DIR [--label_map M] [--language L]: a TFDS dataset of the clips."""
  from mer_jax.data import prepare
  from mer_jax.data.formats import FORMATS, ReaderOptions
  from mer_jax.data.formats.common import FormatError
  require('prepare', 'raw', 'out')
  if FLAGS.format not in FORMATS:
    raise app.UsageError(f'unknown --format {FLAGS.format!r}; known formats: {sorted(FORMATS)}')
  options = ReaderOptions(label_map=FLAGS.label_map or '', language=FLAGS.language)
  try:
    info = prepare.prepare_dataset(FLAGS.format, FLAGS.raw, FLAGS.out, num_frames=FLAGS.num_frames,
                                   frame_size=FLAGS.frame_size, duration_s=FLAGS.duration,
                                   tokenizer_path=FLAGS.tokenizer, options=options, workers=FLAGS.workers)
  except (FormatError, OSError, ValueError) as error:
    sys.exit(f'error: {error}')
  for split, split_info in info['splits'].items():
    print(f"{split}: {split_info['count']} examples written, {len(split_info['skipped'])} skipped")
    for skipped in split_info['skipped']:
      print(f"  skipped {skipped['file'] or skipped['name']}: {skipped['reason']}")
  print(f'dataset in {os.path.abspath(FLAGS.out)} (TFDS: {info["tfds"]})')


def run_seeds(workdirs: list[str]) -> None:
  """mer-jax seeds RUN [RUN ...] [--split S] [--data DIR] [--drop M]: mean ± std of the runs' evaluation reports."""
  from mer_jax.eval import seeds
  if not workdirs:
    raise app.UsageError('usage: mer-jax seeds RUN_DIR [RUN_DIR ...] [--split test]')
  try:
    reports = seeds.read_reports(workdirs, FLAGS.split, report_subdir(FLAGS.data))
  except FileNotFoundError as error:
    sys.exit(f'error: {error}')
  name = ' '.join(filter(None, [os.path.basename(os.path.normpath(workdirs[0])), report_subdir(FLAGS.data)]))
  print(seeds.format_row(name, len(reports), seeds.summary_row(reports)))


def run_pseudo_label() -> None:
  """mer-jax pseudo-label --workdir RUN --split S --out FILE.csv [--threshold --per_class --agree RUN2 --hide_labels]."""
  from mer_jax import pseudo_label
  require('pseudo-label', 'workdir', 'out')
  try:
    summary = pseudo_label.pseudo_label(FLAGS.workdir, FLAGS.split, FLAGS.out, FLAGS.threshold, FLAGS.per_class,
                                        FLAGS.agree, FLAGS.hide_labels)
  except (OSError, ValueError) as error:
    sys.exit(f'error: {error}')
  print(f"kept {summary['kept']} of {summary['total']} clips in {FLAGS.out}; summary in "
        f"{pseudo_label.summary_path(FLAGS.out)}")
  print(json.dumps({k: summary[k] for k in ('per_class', 'hidden_label_accuracy') if k in summary}))


def run_show() -> None:
  """mer-jax show --data DIR --split S [--limit N] [--json]: one prepared example a line."""
  from mer_jax.data import show
  require('show', 'data')
  try:
    rows = show.examples(FLAGS.data, FLAGS.split, FLAGS.limit)
  except (OSError, ValueError) as error:
    sys.exit(f'error: {error}')
  print(show.format_json(rows) if FLAGS.json else show.format_lines(rows))


def run_train() -> None:
  """mer-jax train --config FILE --workdir DIR: trains, or resumes from the latest checkpoint."""
  from mer_jax.eval.evaluate import Validation
  from mer_jax.train.checkpoint import CheckpointMismatch
  from mer_jax.train.run import RunError
  from mer_jax.train.trainer import train
  require('train', 'config', 'workdir')
  if 'rl' in FLAGS.config:  # a config with an rl section trains by GRPO
    from mer_jax.rl.grpo import train_grpo as train
  try:
    train(FLAGS.config, FLAGS.workdir, hooks=Validation(FLAGS.config.train.eval_every).hooks)
  except (RunError, CheckpointMismatch, OSError, ValueError) as error:
    sys.exit(f'error: {error}')


def require_model(command: str) -> None:
  """Fails with a usage message unless exactly one of --workdir and --bundle is given."""
  if (FLAGS.workdir is None) == (FLAGS.bundle is None):
    raise app.UsageError(f'mer-jax {command} needs exactly one of --workdir DIR and --bundle DIR')


def load_wheels() -> 'Wheels | None':
  """The --wheels emotion-wheel folder, read once before any evaluation; None without the flag."""
  from mer_jax.data.formats.common import FormatError
  from mer_jax.eval import wheel
  if FLAGS.wheels is None:
    return None
  try:
    return wheel.load(FLAGS.wheels)
  except (FormatError, OSError) as error:
    sys.exit(f'error: {error}')


def run_evaluate() -> None:
  """mer-jax evaluate --workdir DIR --split S [--data DIR | --suite FILE] [--wheels DIR]: eval/report_S.{json,md}, PNG.

  --data evaluates on another prepared dataset (reports in eval/<its name>/); --suite on each
  dataset a suite file lists, with one table across them (eval/suite/).
  """
  import jax

  from mer_jax.eval import suite
  from mer_jax.eval.evaluate import evaluate
  from mer_jax.eval.report import summary_table
  from mer_jax.train import run
  require_model('evaluate')
  wheels = load_wheels()
  if FLAGS.bundle is not None:
    run_evaluate_bundle(wheels)
    return
  try:
    entries = suite.read_suite(FLAGS.suite) if FLAGS.suite else []
    data_dir = FLAGS.data or run.load_config(FLAGS.workdir).data.dir
    experiment, step, params = run.restore_run(FLAGS.workdir, data_dir, jax.devices())
  except (OSError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  config = experiment.config
  out_dir = os.path.join(FLAGS.workdir, 'eval')
  if entries:
    table = suite.evaluate_suite(config, params, entries, os.path.join(out_dir, 'suite'), wheels)
    print(f'checkpoint step {step}; suite reports in {out_dir}/suite/')
    print(table)
    return
  subdir = report_subdir(config.data.dir if FLAGS.data else None)
  out_dir = os.path.join(out_dir, subdir) if subdir else out_dir
  try:
    report = evaluate(experiment, params, FLAGS.split, out_dir, wheels=wheels, drop=(FLAGS.drop,) if FLAGS.drop else ())
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  print(f'checkpoint step {step}; report in {out_dir}/report_{FLAGS.split}.json')
  print(summary_table(report))


def report_subdir(data_dir: str | None) -> str:
  """Where under a run's eval/ the reports of --data DIR and --drop M go ('' for the run's own data, complete)."""
  from mer_jax.eval import suite
  parts = ([suite.data_name(os.path.abspath(data_dir))] if data_dir else []) + ([f'drop-{FLAGS.drop}'] if FLAGS.drop else [])
  return os.path.join('', *parts)


def run_corrupt() -> None:
  """mer-jax corrupt --raw DIR --out DIR [--protocol mer-noise] [--snr 5,10] [--blur 1,2,4] [--noise DIR]."""
  from mer_jax.data import corrupt
  require('corrupt', 'raw', 'out')
  try:
    count = corrupt.corrupt_dataset(FLAGS.raw, FLAGS.out, snrs=FLAGS.snr, blurs=FLAGS.blur, noise_dir=FLAGS.noise,
                                    seed=FLAGS.seed)
  except (OSError, ValueError) as error:
    sys.exit(f'error: {error}')
  print(f'{count} clips corrupted ({FLAGS.protocol}: SNR {FLAGS.snr} dB, blur x{FLAGS.blur}) into '
        f'{os.path.abspath(FLAGS.out)}')


def run_evaluate_bundle(wheels: 'Wheels | None') -> None:
  """mer-jax evaluate --bundle DIR [--data DIR] [--out DIR] --split S: the same report for an exported bundle."""
  from mer_jax import export
  from mer_jax.eval.evaluate import evaluate
  from mer_jax.eval.report import summary_table
  try:
    data_dir = FLAGS.data or export.read_bundle_config(FLAGS.bundle).data.dir
    predictor = export.load_bundle(FLAGS.bundle, data_dir)
  except (OSError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  out_dir = FLAGS.out or os.path.join(FLAGS.bundle, 'eval')
  report = evaluate(predictor.experiment, predictor.params, FLAGS.split, out_dir, wheels=wheels)
  print(f'bundle {FLAGS.bundle} (checkpoint step {predictor.experiment.step}) on {data_dir}; '
        f'report in {out_dir}/report_{FLAGS.split}.json')
  print(summary_table(report))


def run_bench() -> None:
  """mer-jax bench --what decode --config FILE: decode tokens/s and latency per clip, with and without KV cache."""
  if FLAGS.what != 'decode':
    {'import': run_bench_import, 'train': run_bench_train, 'data': run_bench_loop, 'eval': run_bench_loop}[FLAGS.what]()
    return
  import jax
  from mer_jax.eval import bench
  require('bench', 'config')
  config = FLAGS.config
  llm = config.model.llm
  print(f"{jax.devices()[0].device_kind}: LLM width {llm.width}, {llm.layers} layers, vocab "
        f"{llm.vocab_size or bench.DEFAULT_VOCAB_SIZE}, {config.model.dtype} compute, random weights, "
        f"synthetic clips of {FLAGS.duration} s audio and {FLAGS.num_frames} frames")
  rows = bench.bench_decode(config, iterations=FLAGS.iterations, num_frames=FLAGS.num_frames,
                            duration_s=FLAGS.duration)
  print(bench.format_table(rows))


def run_bench_train() -> None:
  """mer-jax bench --what train [--width ... --dtype D --attention flash,einsum,xla] [--vs torch] | --config FILE."""
  if FLAGS.config is not None and FLAGS.vs:
    raise app.UsageError('bench --what train --vs torch times the LLM alone: leave out --config')
  from mer_jax.eval import bench_train
  if FLAGS.config is not None:
    from mer_jax.eval import bench, bench_loop
    vocab = FLAGS.config.model.llm.vocab_size or bench.DEFAULT_VOCAB_SIZE
    print(bench_loop.bench_model(FLAGS.config, vocab, FLAGS.steps, FLAGS.repeats))
    return
  dims = {name: FLAGS[name].value for name in ('width', 'layers', 'heads', 'kv_heads', 'seq', 'batch', 'vocab',
                                               'loss_chunk')}
  shape = bench_train.Shape(**dims, dtype=FLAGS.dtype or 'float32')
  try:
    print(bench_train.bench_llm(shape, FLAGS.attention, FLAGS.threads if FLAGS.vs else None, FLAGS.steps,
                                FLAGS.repeats))
  except (RuntimeError, ValueError) as error:
    raise app.UsageError(str(error)) from error


def run_bench_loop() -> None:
  """mer-jax bench --what data|eval --config FILE: loader vs step examples/s, or evaluation clips/s on --split."""
  from mer_jax.eval import bench_loop
  require(f'bench --what {FLAGS.what}', 'config')
  if FLAGS.what == 'data':
    print(bench_loop.bench_data(FLAGS.config, FLAGS.steps, FLAGS.repeats))
  else:
    print(bench_loop.bench_eval(FLAGS.config, FLAGS.split, FLAGS.repeats))


def run_bench_import() -> None:
  """mer-jax bench --what import --hf DIR [--dtype D] [--random_gb N]: peak RSS of load_llm vs size on disk."""
  from mer_jax.eval import bench
  require('bench --what import', 'hf')
  if FLAGS.random_gb:
    config = bench.write_random_llama(FLAGS.hf, FLAGS.random_gb)
    print(f"wrote a random bfloat16 LLaMA with {config['num_hidden_layers']} layers to {FLAGS.hf}")
  print(bench.format_import(bench.bench_import(FLAGS.hf, FLAGS.dtype or 'bfloat16')))


def run_convert() -> None:
  """mer-jax convert --hf DIR --out CKPT [--component C]: an HF checkpoint as an Orbax one that init_from accepts."""
  from mer_jax.interop import weights
  require('convert', 'hf', 'out')
  try:
    info = weights.convert(FLAGS.hf, FLAGS.out, FLAGS.component)
  except (OSError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  print(f"wrote the {info['component']} of {info['source']} ({info['dtype']}) to {os.path.abspath(FLAGS.out)}; "
        f"set config.model.{info['component']}.init_from to it")


def run_describe() -> None:
  """mer-jax describe --config FILE [--compile --hbm_gb CHIP]: parameter counts and per-device memory on the mesh.

  With --compile it exits 1 when the compiled step misses a target (memory, partitioning, collectives).
  """
  from mer_jax.train import compile_check
  require('describe', 'config')
  config = FLAGS.config
  if FLAGS.compile:
    try:
      hbm_gb = compile_check.resolve_hbm(FLAGS.hbm_gb)
      compile_check.use_fake_devices(compile_check.mesh_device_count(config))
    except ValueError as error:
      raise app.UsageError(str(error)) from error
  from mer_jax.data.pipeline import tokenizer_path
  from mer_jax.data.text import TextTokenizer
  from mer_jax.train.describe import describe, format_report
  from mer_jax.train.experiment import Experiment
  vocab_size = (config.model.llm.vocab_size or Experiment.pretrained_vocab_size(config)
                or TextTokenizer(tokenizer_path(config)).vocab_size)
  print(format_report(describe(config, vocab_size)))
  if not FLAGS.compile:
    return
  result = compile_check.compile_train_step(config, vocab_size)
  print()
  print(compile_check.format_compile_report(result, hbm_gb))
  problems = compile_check.check(result, hbm_gb)
  if problems:
    sys.exit('does not meet the targets: ' + '; '.join(problems))
  print(f'meets the targets: peak <= 85% of {hbm_gb:g} GB, partition efficiency >= 0.97, no collective over '
        '1 GiB carrying the whole batch, no parameter over 1 MiB replicated')


def run_predict(clips: list[str]) -> None:
  """mer-jax predict CLIP.mp4 [...] --workdir DIR | --bundle DIR [--json]: scored label, answer and valence per clip."""
  from mer_jax.eval import predict
  require_model('predict')
  if not clips:
    raise app.UsageError('usage: mer-jax predict CLIP.mp4 [CLIP2.mp4 ...] --workdir DIR | --bundle DIR [--json] '
                         '[--transcript TEXT | --transcripts FILE.csv]')
  if FLAGS.transcript is not None and FLAGS.transcripts is not None:
    raise app.UsageError('mer-jax predict takes --transcript or --transcripts, not both')
  try:
    transcripts = predict.read_transcripts(FLAGS.transcripts) if FLAGS.transcripts else {}
  except (OSError, ValueError) as error:
    raise app.UsageError(f'--transcripts: {error}') from error
  sentences = predict.clip_sentences(clips, FLAGS.transcript, transcripts)
  try:
    results, step = predict_clip_files(clips, sentences)
  except FileNotFoundError as error:
    raise app.UsageError(str(error)) from error
  if FLAGS.json:
    print(predict.format_json(results))
  else:
    if step is not None:
      print(f'checkpoint step {step}')
    print(predict.format_table(results))
  if step is None:
    sys.exit('error: no clip could be predicted')


def predict_clip_files(clips: list[str], sentences: list[str]) -> tuple[list[dict], int | None]:
  """predict's results and checkpoint step, from the --bundle or the --workdir run's latest checkpoint."""
  from mer_jax.eval import predict
  if FLAGS.bundle is not None:
    from mer_jax import export
    return predict.predict_with(export.read_preprocessing(FLAGS.bundle), clips, sentences,
                                lambda: export.bundle_predictor(FLAGS.bundle))
  return predict.predict_files(FLAGS.workdir, clips, sentences)


def run_export() -> None:
  """mer-jax export --workdir DIR --out OUT [--format bundle|hf] [--dtype D]: an inference bundle or HF directory."""
  from mer_jax import export
  require('export', 'workdir', 'out')
  fmt = FLAGS.format if FLAGS['format'].present else 'bundle'
  try:
    described = export.export(FLAGS.workdir, FLAGS.out, fmt, FLAGS.dtype or 'bfloat16')
  except (OSError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  merged = ', LoRA merged' if described['lora_merged'] else ''
  print(f"wrote the {fmt} export of {described['source']} (checkpoint step {described['step']}, "
        f"{described['dtype']}{merged}) to {os.path.abspath(FLAGS.out)}: "
        f"{export.directory_bytes(FLAGS.out):,} bytes")


def run_sweep() -> None:
  """mer-jax sweep --config FILE --workdir DIR [--print]: runs get_hyper's points in turn, then tabulates them."""
  from mer_jax import sweep
  require('sweep', 'config', 'workdir')
  spec = FLAGS['config'].config_filename
  try:
    points = sweep.load_points(spec)
  except (OSError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  problems = sweep.problems(FLAGS.config, points)
  if problems:
    sys.exit('error: ' + '\nerror: '.join(problems))
  if FLAGS.print:
    print('\n'.join(sweep.launch_commands(spec, FLAGS['config'].override_values, FLAGS.workdir, points)))
    return
  import jax

  from mer_jax.eval.evaluate import Validation
  from mer_jax.train.trainer import train

  def run_point(config: ConfigDict, workdir: str) -> dict:
    validation = Validation(config.train.eval_every)
    train(config, workdir, hooks=validation.hooks)
    return validation.report

  rows = sweep.run_points(FLAGS.config, points, FLAGS.workdir, run_point)
  if jax.process_index() == 0:
    print(sweep.write_results(rows, FLAGS.workdir))
    print(f'sweep table and plot in {FLAGS.workdir}/sweep.{{csv,md,png}}')


def main(argv: list[str]) -> None:
  """Dispatches to the command named by the first positional argument."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if len(argv) < 2 or argv[1] not in COMMANDS or (len(argv) != 2 and argv[1] not in POSITIONAL_COMMANDS):
    raise app.UsageError(f'usage: mer-jax {{{",".join(COMMANDS)}}} [--flags]; got {argv[1:]}')
  join_job(argv[1])
  {'synth': run_synth, 'prepare': run_prepare, 'show': run_show, 'train': run_train, 'evaluate': run_evaluate, 'describe': run_describe,
   'bench': run_bench, 'predict': lambda: run_predict(argv[2:]), 'seeds': lambda: run_seeds(argv[2:]), 'sweep': run_sweep,
   'convert': run_convert, 'export': run_export, 'corrupt': run_corrupt, 'pseudo-label': run_pseudo_label}[argv[1]]()



def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; an override of a key the config lacks stops here with the key and the valid ones."""
  spec = config_check.config_argument(argv)
  if spec is not None:
    try:
      problems = config_check.unknown_override_keys(config_check.load_config_file(spec), argv)
    except (OSError, ValueError) as error:
      problems = [f'config {spec}: {error}']
    if problems:
      sys.exit('error: ' + '\nerror: '.join(problems))
  return FLAGS(argv)


def run() -> None:
  """Console-script entry point."""
  app.run(main, argv=sys.argv, flags_parser=parse_flags)
