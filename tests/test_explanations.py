"""Explanations as training targets (data.explanations) end to end on the tiny config: examples, train, evaluate."""

import os

import numpy as np
import pytest

from configs import demo
from mer_jax.data import pipeline
from mer_jax.eval.evaluate import evaluate
from mer_jax.eval.report import summary_table
from mer_jax.train.checkpoint import Checkpointer
from mer_jax.train.experiment import Experiment
from mer_jax.train.trainer import train


@pytest.fixture(scope='module')
def config(prepared_tiny):
  config = demo.get_config('variant=tiny')
  config.data.dir = prepared_tiny
  config.data.explanations = True
  config.train.steps = 2
  config.train.checkpoint_every = 2
  config.train.eval_every = 0
  return config


def test_explanations_lengthen_sequences_and_decoding():
  config = demo.get_config('variant=tiny')
  assert (config.data.seq_len, config.eval.max_new_tokens) == (64, 6)
  config.data.explanations = True
  assert (config.data.seq_len, config.eval.max_new_tokens) == (112, 48)


def test_examples_carry_label_then_reason(config):
  info = pipeline.load_info(config.data.dir)
  builder = pipeline.prompt_builder(config, info)
  featurizer = pipeline.Featurizer(builder, tuple(config.model.modalities))
  raw = pipeline.open_split(config.data, info, 'test')[0]
  record, example = pipeline.text_fields(raw), featurizer(raw)
  start = int(example['answer_start'])
  answer = example['tokens'][start:].tolist()
  assert builder.answer_text(answer) == f"{record['label']}. {record['reason']}"
  assert example['loss_mask'].sum() == len(builder.answer_ids(record['label'], record['reason']))
  assert builder.parse_label(answer) == record['label']


def test_evaluate_reports_explanations(config, tmp_path):
  workdir = str(tmp_path / 'run')
  train(config, workdir)
  experiment = Experiment(config)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  _, state, _ = checkpointer.restore_latest(experiment.abstract_state())
  checkpointer.close()
  out_dir = str(tmp_path / 'eval')
  report = evaluate(experiment, state['params'], 'test', out_dir, progress=False)

  count = report['count']
  explanations = report['explanations']
  assert explanations['count'] == count and 0.0 <= explanations['token_f1'] <= 1.0
  cue_accuracy = explanations['cue_accuracy']
  assert set(cue_accuracy) == {'voice', 'face', 'text', 'all', 'count'} and cue_accuracy['count'] == count
  assert cue_accuracy['all'] <= min(cue_accuracy['voice'], cue_accuracy['face'], cue_accuracy['text'])
  open_vocabulary = report['open_vocabulary']
  assert set(open_vocabulary) == {'precision', 'recall', 'f1', 'hit_rate', 'rule'}
  # One reference label: recall is the hit rate, and every closed-set hit is an open-vocabulary hit.
  assert open_vocabulary['recall'] == pytest.approx(open_vocabulary['hit_rate'])
  assert open_vocabulary['recall'] >= report['generated']['accuracy'] - 1e-9
  samples = report['generated_samples']
  fields = [f for _, batch_fields in pipeline.eval_batches(config, experiment.info, 'test', 4) for f in batch_fields]
  assert [(s['name'], s['label']) for s in samples] == [(f['name'], f['label']) for f in fields[:10]]
  table = summary_table(report)
  assert '| explanations | n | token F1 | cue voice | cue face | cue text | all cues |' in table
  assert 'set precision' in table
  markdown = open(os.path.join(out_dir, 'report_test.md')).read()
  assert '## Sample generated answers' in markdown and samples[0]['name'] in markdown
  assert np.isfinite(report['valence']['mse'])
