"""mer-jax predict on raw mp4 files: labels, answers and valence per clip; broken files reported per file."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mer_jax.data import pipeline
from mer_jax.eval import predict
from mer_jax.train.trainer import train

from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mer_jax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', 'from mer_jax.main import run; run()', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def train_tiny_run(data_dir: str, workdir: str, **lora):
  """Trains the tiny config 2 steps into workdir, config.model.lora updated by `lora`; returns the config."""
  config = demo.get_config('variant=tiny')
  config.data.dir = data_dir
  config.train.steps = 2
  config.train.eval_every = 0
  config.model.lora.update(lora)
  train(config, workdir)
  return config


@pytest.fixture(scope='module')
def run(prepared_tiny, tmp_path_factory):
  """A tiny run trained 2 steps, two real clips, a zero-byte mp4 and a missing path."""
  root = tmp_path_factory.mktemp('predict')
  workdir = str(root / 'run')
  config = train_tiny_run(prepared_tiny, workdir)
  raw = os.path.join(os.path.dirname(prepared_tiny), 'raw')
  video = os.path.join(raw, 'video')
  real = [os.path.join(video, name) for name in sorted(os.listdir(video))[:2]]
  empty = str(root / 'empty.mp4')
  open(empty, 'wb').close()
  return {'config': config, 'workdir': workdir, 'raw': raw, 'real': real, 'empty': empty,
          'missing': str(root / 'missing.mp4')}


def test_predict_files_reports_broken_files_and_predicts_the_rest(run):
  paths = [run['real'][0], run['empty'], run['missing'], run['real'][1]]
  results, step = predict.predict_files(run['workdir'], paths, [''] * len(paths))
  assert step == 2
  assert [r['file'] for r in results] == paths
  labels = list(pipeline.load_info(run['config'].data.dir)['labels'])
  for result in (results[0], results[3]):
    assert result['label'] in labels and math.isfinite(result['valence'])
    assert sum(result['scores'].values()) == pytest.approx(1.0, abs=1e-5)
    assert result['score'] == max(result['scores'].values())
    assert result['answer_valid'] == (result['answer_label'] in labels)
    assert result['answer_label'] is None or result['answer_label'] == result['answer'].lower()
    assert result['explanation'] == ''  # trained without explanations: the answer is the label alone
  assert results[1] == {'file': run['empty'], 'error': 'empty file (0 bytes)'}
  assert results[2] == {'file': run['missing'], 'error': 'file not found'}
  table = predict.format_table(results)
  assert '2 of 4 clip(s) could not be predicted' in table
  assert f"{run['empty']}: empty file (0 bytes)" in table and f"{run['missing']}: file not found" in table
  assert os.path.basename(run['real'][1]) in table and results[0]['label'] in table


def test_transcripts_reach_the_prompt(run):
  transcripts = predict.read_transcripts(os.path.join(run['raw'], 'transcription.csv'))
  sentences = predict.clip_sentences(run['real'], None, transcripts)
  assert sentences == [transcripts[predict.clip_name(path)] for path in run['real']] and all(sentences)
  assert predict.clip_sentences(run['real'], 'I am fine.', transcripts) == ['I am fine.'] * 2
  info = pipeline.load_info(run['config'].data.dir)
  builder = pipeline.prompt_builder(run['config'], info)
  clips = predict.decode_clips(run['real'], sentences, info)
  silent = predict.decode_clips(run['real'], ['', ''], info)
  batch, valid = next(predict.build_batches(clips, builder, ('audio', 'video', 'text'), 4, info))
  plain, _ = next(predict.build_batches(silent, builder, ('audio', 'video', 'text'), 4, info))
  assert valid == 2 and batch['tokens'].shape == (4, run['config'].data.seq_len)
  np.testing.assert_array_equal(batch['tokens'][3], batch['tokens'][1])
  assert np.all(batch['answer_start'] > plain['answer_start'])
  np.testing.assert_array_equal(batch['audio'][0], clips[0].audio)
  assert batch['frames'].shape == (4, 4, 32, 32, 3) and batch['frames'].dtype == np.uint8


def test_cli_json_and_exit_codes(run):
  paths = [run['real'][0], run['empty'], run['missing'], run['real'][1]]
  result = mer_jax('predict', *paths, '--workdir', run['workdir'], '--json',
                   '--transcripts', os.path.join(run['raw'], 'transcription.csv'))
  assert result.returncode == 0, result.stderr
  document = json.loads(result.stdout)
  assert [r['file'] for r in document] == paths
  assert document[1]['error'] == 'empty file (0 bytes)' and document[2]['error'] == 'file not found'
  assert all(math.isfinite(document[i]['valence']) and 'label' in document[i] for i in (0, 3))
  broken = mer_jax('predict', run['empty'], run['missing'], '--workdir', run['workdir'])
  assert broken.returncode != 0 and 'no clip could be predicted' in broken.stderr
  assert f"{run['empty']}: empty file (0 bytes)" in broken.stdout
  assert f"{run['missing']}: file not found" in broken.stdout


def test_clips_without_audio_or_video_are_predicted_with_it_missing(run, tmp_path):
  import av
  import soundfile
  info = pipeline.load_info(run['config'].data.dir)
  audio, frames = predict.media.decode_clip(run['real'][0], frame_size=32)
  audio_only = str(tmp_path / 'voice.wav')
  soundfile.write(audio_only, audio, 16000)
  video_only = str(tmp_path / 'face.mp4')
  with av.open(video_only, 'w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=4)
    stream.width = stream.height = 32
    stream.pix_fmt = 'yuv420p'
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      frame.pts = i
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  results, step = predict.predict_files(run['workdir'], [audio_only, video_only], ['', ''])
  labels = list(info['labels'])
  assert step == 2 and all(r['label'] in labels and math.isfinite(r['valence']) for r in results)
  clips = predict.decode_clips([audio_only, video_only], ['', ''], info)
  assert clips[0].frames is None and clips[1].audio is None
  builder = pipeline.prompt_builder(run['config'], info)
  batch, _ = next(predict.build_batches(clips, builder, ('audio', 'video', 'text'), 4, info))
  prompts = [builder.tokenizer.decode(tokens.tolist()) for tokens in batch['tokens'][:2]]
  assert 'Video: miss' in prompts[0] and 'Audio: miss' in prompts[1]  # as much of the word as the slots hold
  assert batch['video_present'][:2].tolist() == [False, True] and batch['audio_present'][:2].tolist() == [True, False]
