"""mer-jax export: inference bundles (round trip, predict and evaluate on them) and the LoRA-merged HF backbone."""

import json
import os
import shutil

from flax import nnx
import jax
import numpy as np
import pytest
import torch
import transformers

from mer_jax import export
from mer_jax.data import pipeline
from mer_jax.eval import predict
from mer_jax.eval.evaluate import Predictor, predict_split
from mer_jax.interop import hf
from mer_jax.models import lora
from mer_jax.train import run as run_lib
from tests.test_predict import mer_jax, train_tiny_run

BF16_SCORE_TOLERANCE = 0.05    # mean answer log-likelihoods of about -7: bfloat16 weights move them by ~1e-2
BF16_VALENCE_TOLERANCE = 0.02
F32_TOLERANCE = 1e-5           # merged adapters: W + s A B rounds differently from W x + s (x A) B


@pytest.fixture(scope='module')
def run(prepared_tiny, tmp_path_factory):
  """A tiny run with LoRA on every projection trained 2 steps, its reference Predictor, and its exports."""
  root = tmp_path_factory.mktemp('export')
  workdir = str(root / 'run')
  config = train_tiny_run(prepared_tiny, workdir, rank=4, alpha=8.0, targets=tuple(lora.TARGETS))
  out = {name: str(root / name) for name in ('f32', 'bf16', 'hf')}
  export.export_bundle(workdir, out['f32'], 'float32')
  export.export_bundle(workdir, out['bf16'], 'bfloat16')
  export.export_hf(workdir, out['hf'], 'float32')
  experiment, step, params = run_lib.restore_run(workdir, prepared_tiny)
  reference = Predictor(experiment, params)
  batch, _ = next(pipeline.eval_batches(config, experiment.info, 'test', config.eval.batch_size))
  return {'config': config, 'workdir': workdir, 'reference': reference, 'step': step, 'batch': batch,
          'root': root, **out}


def test_bundle_holds_what_inference_needs(run, prepared_tiny):
  assert sorted(os.listdir(run['f32'])) == ['bundle.json', 'config.json', 'model.safetensors',
                                            'preprocessing.json', 'tokenizer.json']
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(run['f32']).st_mode & 0o777 == 0o777 & ~umask  # not the temporary directory's private mode
  with open(os.path.join(run['f32'], 'bundle.json')) as f:
    assert json.load(f) == {'step': 2, 'dtype': 'float32', 'source': run['workdir'], 'lora_merged': True}
  info = pipeline.load_info(prepared_tiny)
  preprocessing = export.read_preprocessing(run['f32'])
  assert preprocessing == {'labels': info['labels'], 'audio': info['audio'], 'frames': info['frames'],
                           'duration_s': info['duration_s'],
                           'train_valence_mean': info['splits']['train']['valence_mean']}
  config = export.read_bundle_config(run['f32'])
  assert config.model.lora.rank == 0 and config.model.param_dtype == 'float32'
  assert config.data.tokenizer == os.path.join(run['f32'], 'tokenizer.json')
  tensors = hf.Checkpoint(run['f32']).tensors
  assert not any('lora' in name for name in tensors) and 'llm.layers.blocks.attn.q.kernel' in tensors
  assert {t.dtype for t in hf.Checkpoint(run['bf16']).tensors.values()} == {'BF16'}
  sizes = {name: os.path.getsize(os.path.join(run[name], 'model.safetensors')) for name in ('f32', 'bf16')}
  assert sizes['bf16'] < 0.51 * sizes['f32']


def test_float32_bundle_predicts_as_the_checkpoint(run, prepared_tiny):
  bundle = export.load_bundle(run['f32'], data_dir=prepared_tiny)
  expected, got = run['reference'].predict(run['batch']), bundle.predict(run['batch'])
  np.testing.assert_allclose(got['scores'], expected['scores'], atol=F32_TOLERANCE)
  np.testing.assert_allclose(got['valence'], expected['valence'], atol=F32_TOLERANCE)
  np.testing.assert_array_equal(got['generated'], expected['generated'])
  bundle_split = predict_split(bundle, 'test', progress=False)
  reference_split = predict_split(run['reference'], 'test', progress=False)
  np.testing.assert_array_equal(bundle_split['scored'], reference_split['scored'])
  np.testing.assert_array_equal(bundle_split['true'], reference_split['true'])
  assert bundle.experiment.train_valence_mean == run['reference'].experiment.train_valence_mean


def test_bfloat16_bundle_is_close(run):
  bundle = export.load_bundle(run['bf16'])
  assert {x.dtype for x in jax.tree.leaves(bundle.params)} == {np.dtype('bfloat16')}
  expected, got = run['reference'].predict(run['batch']), bundle.predict(run['batch'])
  np.testing.assert_allclose(got['scores'], expected['scores'], atol=BF16_SCORE_TOLERANCE)
  np.testing.assert_allclose(got['valence'], expected['valence'], atol=BF16_VALENCE_TOLERANCE)


def test_predict_on_a_bundle_matches_the_workdir(run, prepared_tiny):
  video = os.path.join(os.path.dirname(prepared_tiny), 'raw', 'video')
  paths = [os.path.join(video, name) for name in sorted(os.listdir(video))[:3]]
  sentences = [''] * len(paths)
  from_run, run_step = predict.predict_files(run['workdir'], paths, sentences)
  from_bundle, bundle_step = predict.predict_with(export.read_preprocessing(run['f32']), paths, sentences,
                                                  lambda: export.bundle_predictor(run['f32']))
  assert run_step == bundle_step == 2
  assert [r['label'] for r in from_bundle] == [r['label'] for r in from_run]
  assert [r['answer'] for r in from_bundle] == [r['answer'] for r in from_run]
  np.testing.assert_allclose([r['valence'] for r in from_bundle], [r['valence'] for r in from_run],
                             atol=F32_TOLERANCE)


def test_merged_hf_export_gives_the_unmerged_llm_logits(run):
  params = run['reference'].params
  adapter_b = params['llm']['layers']['blocks']['attn']['o']['lora']['b']
  assert float(np.abs(adapter_b).max()) > 0  # the adapters trained, so merging changes the kernels
  model = nnx.merge(run['reference'].experiment.parts.graphdef, params, run['reference'].experiment.parts.rest)
  ids = np.random.RandomState(0).randint(0, params['llm']['embed']['embedding'].shape[0], (2, 16))
  ours = np.asarray(model.llm(ids))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(run['hf'], dtype=torch.float32).eval()
  with torch.no_grad():
    logits = theirs(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(logits, ours, atol=1e-4)
  assert os.path.exists(os.path.join(run['hf'], 'tokenizer.json'))


def test_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
  def fail(path, *args):
    with open(path, 'wb') as f:
      f.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(hf, 'write_safetensors', fail)
  for export_to in (export.export_bundle, export.export_hf):
    with pytest.raises(OSError, match='disk full'):
      export_to(run['workdir'], str(tmp_path / 'out'))
  with pytest.raises(ValueError, match=r"unsupported export dtype 'float16'; choose from \('bfloat16', 'float32'\)"):
    export.export_bundle(run['workdir'], str(tmp_path / 'out'), 'float16')
  assert os.listdir(tmp_path) == []


def test_existing_output_and_missing_checkpoints_are_refused(run, tmp_path):
  with pytest.raises(FileExistsError, match=f"{run['f32']} already exists; remove it"):
    export.export_bundle(run['workdir'], run['f32'])
  assert len(os.listdir(run['f32'])) == 5
  empty = tmp_path / 'untrained'
  empty.mkdir()
  (empty / 'config.json').write_text(run['config'].to_json())
  with pytest.raises(FileNotFoundError, match='no usable checkpoint in'):
    export.export_hf(str(empty), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='is not a bundle written by `mer-jax export`'):
    export.load_bundle(run['workdir'])


def test_damaged_checkpoint_is_reported_and_left_in_place(run, tmp_path, capsys):
  workdir = tmp_path / 'damaged'
  shutil.copytree(run['workdir'], workdir)
  for path in (workdir / 'checkpoints' / '2' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'garbage')
  with pytest.raises(FileNotFoundError, match='no usable checkpoint in'):
    export.export_bundle(str(workdir), str(tmp_path / 'out'))
  warning = capsys.readouterr().err
  assert f"WARNING: checkpoint {workdir / 'checkpoints'}/2" in warning and 'cannot be read' in warning
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2'] and not (tmp_path / 'out').exists()


def test_dataset_with_other_preprocessing_is_refused(run, prepared_tiny):
  expected = {**export.read_preprocessing(run['f32']), 'frames': {'num_frames': 8, 'size': 32, 'dtype': 'uint8'}}
  with pytest.raises(ValueError, match=r"prepared differently from what bundle b expects: frames=.*'num_frames': 4"):
    export.dataset_info_for(prepared_tiny, 'b', expected)


def test_cli_export_reports_its_size(run):
  out = str(run['root'] / 'cli_hf')
  result = mer_jax('export', '--workdir', run['workdir'], '--out', out, '--format', 'hf', '--dtype', 'bfloat16')
  assert result.returncode == 0, result.stderr
  assert f'wrote the hf export of {run["workdir"]} (checkpoint step 2, bfloat16, LoRA merged)' in result.stdout
  assert f'{export.directory_bytes(out):,} bytes' in result.stdout
  assert hf.read_config(out)['torch_dtype'] == 'bfloat16'


def test_cli_evaluate_on_a_bundle_writes_the_report(run):
  out = str(run['root'] / 'bundle_eval')
  result = mer_jax('evaluate', '--bundle', run['f32'], '--split', 'test', '--out', out)
  assert result.returncode == 0, result.stderr
  assert f"bundle {run['f32']} (checkpoint step 2) on {run['config'].data.dir}" in result.stdout
  with open(os.path.join(out, 'report_test.json')) as f:
    report = json.load(f)
  reference = predict_split(run['reference'], 'test', progress=False)
  assert report['count'] == len(reference['true'])
  assert report['scored']['accuracy'] == pytest.approx(float(np.mean(reference['scored'] == reference['true'])))
  both = mer_jax('evaluate', '--bundle', run['f32'], '--workdir', run['workdir'])
  assert both.returncode != 0 and 'needs exactly one of --workdir DIR and --bundle DIR' in both.stderr
