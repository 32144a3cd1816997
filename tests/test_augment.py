"""Affective augmentation: SNR of mixed noise, SpecAugment widths, blur, modality dropout, seeding, corrupt, errors."""

import filecmp
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from configs import demo
from mer_jax.data import augment, augment_config, corrupt, media, pipeline
from mer_jax.models.audio import spec_augment
from mer_jax.models.mer import MERModel

ALL_ON = dict(noise_prob=1.0, babble_prob=0.3, gain_prob=0.5, speed_prob=0.5, blur_prob=0.5, crop_prob=0.5,
              flip_prob=0.5, jitter_prob=0.5, frame_drop_prob=0.3, word_dropout=0.2, asr_prob=0.2, drop_audio=0.3,
              drop_video=0.3, drop_text=0.3, prompt_variety=True)


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
  """10 log10 of the clean power over the power of what was added."""
  clean = clean.astype(np.float64)
  return 10 * np.log10(augment.power(clean) / augment.power(mixed.astype(np.float64) - clean))


def high_frequency_energy(frames: np.ndarray) -> float:
  """Mean squared difference between horizontally adjacent pixels."""
  return float(np.mean(np.diff(frames.astype(np.float64), axis=2) ** 2))


@pytest.fixture(scope='module')
def config(prepared_tiny):
  config = demo.get_config('variant=tiny')
  config.data.dir = prepared_tiny
  return config


@pytest.fixture(scope='module')
def info(config):
  return pipeline.load_info(config.data.dir)


@pytest.fixture(scope='module')
def speech(config, info):
  return np.asarray(pipeline.open_split(config.data, info, 'test')[0]['audio'])


@pytest.mark.parametrize('snr', [0.0, 5.0, 20.0])
def test_generated_noise_is_mixed_at_the_drawn_snr(speech, snr):
  augmenter = augment.Augmenter(augment_config.parse({'noise_prob': 1.0, 'noise_snr': str(snr)}), ('audio',),
                                16000, 1)
  for index in range(3):
    mixed = augmenter.audio(speech, augment.example_rng(0, 0, index))
    assert abs(snr_db(speech, mixed) - snr) < 0.5


def test_noise_folder_files_are_mixed_at_the_snr(speech, tmp_path):
  rng = np.random.default_rng(1)
  soundfile.write(tmp_path / 'hum.wav', 0.3 * np.sin(np.arange(8000) * 0.2) + 0.05 * rng.standard_normal(8000), 8000)
  parsed = augment_config.parse({'noise_prob': 1.0, 'noise_snr': '10', 'noise_dir': str(tmp_path)})
  assert parsed.noise_files == (str(tmp_path / 'hum.wav'),)
  mixed = augment.Augmenter(parsed, ('audio',), 16000, 1).audio(speech, augment.example_rng(0, 0, 0))
  assert abs(snr_db(speech, mixed) - 10.0) < 0.5


def test_spec_augment_masks_bands_no_wider_than_the_width():
  features = jnp.ones([64, 100, 80])
  masked = np.asarray(spec_augment(features, jax.random.key(0), 1, 12, 1, 7))
  time_masked = np.all(masked == 0, axis=2).sum(axis=1)
  freq_masked = np.all(masked == 0, axis=1).sum(axis=1)
  assert time_masked.max() == 12 and freq_masked.max() == 7  # widths drawn in [0, width]: the widest occur
  assert time_masked.min() >= 0 and len(set(time_masked)) > 3
  for example, width in zip(masked, time_masked):  # each time mask is one contiguous band
    rows = np.flatnonzero(np.all(example == 0, axis=1))
    assert len(rows) == width and (width == 0 or rows[-1] - rows[0] == width - 1)
  np.testing.assert_array_equal(np.asarray(spec_augment(features, jax.random.key(0), 1, 12, 1, 7)), masked)


def test_blur_lowers_high_frequency_energy(info, config):
  frames = np.asarray(pipeline.open_split(config.data, info, 'test')[0]['frames'])
  energies = [high_frequency_energy(augment.blur(frames, f)) for f in (1, 2, 4)]
  np.testing.assert_array_equal(augment.blur(frames, 1), frames)
  assert energies[0] > energies[1] > energies[2] and energies[2] < 0.6 * energies[0]


@pytest.fixture(scope='module')
def model_forward(config):
  model = MERModel(config.model, 64, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch)[0])
  return lambda batch: np.asarray(forward(state, batch))


def model_batch(seed: int, audio_present: bool, video_present: bool) -> dict:
  rng = np.random.default_rng(seed)
  tokens = np.tile(np.arange(3, 27, dtype=np.int32), (2, 1))
  return {'tokens': tokens, 'soft_positions': np.tile(np.arange(2, 10, dtype=np.int32), (2, 1)),
          'answer_start': np.array([20, 20], np.int32),
          'audio': rng.integers(-8000, 8000, size=(2, 3200)).astype(np.int16),
          'frames': rng.integers(0, 256, size=(2, 4, 32, 32, 3)).astype(np.uint8),
          'audio_present': np.array([audio_present] * 2), 'video_present': np.array([video_present] * 2)}


@pytest.mark.parametrize('modality', ['audio', 'video'])
def test_a_dropped_modality_leaves_no_trace_in_the_logits(model_forward, modality):
  other = 'frames' if modality == 'audio' else 'audio'
  key = 'audio' if modality == 'audio' else 'frames'
  present = dict(audio_present=modality != 'audio', video_present=modality != 'video')
  first, second = model_batch(0, **present), model_batch(1, **present)
  second[other] = first[other]  # only the dropped modality's input differs
  np.testing.assert_array_equal(model_forward(first), model_forward(second))
  kept = model_batch(0, True, True), {**model_batch(0, True, True), key: second[key]}
  assert np.abs(model_forward(kept[0]) - model_forward(kept[1])).max() > 1e-4


def test_missing_modalities_read_missing_in_the_prompt(config, info):
  builder = pipeline.prompt_builder(config, info)
  featurizer = pipeline.Featurizer(builder, tuple(config.model.modalities), drop=('audio', 'text'))
  record = pipeline.open_split(config.data, info, 'test')[0]
  example = featurizer(record)
  prompt = builder.tokenizer.decode(example['tokens'][:example['answer_start']].tolist())
  assert 'Audio: miss' in prompt and 'Transcript: missing' in prompt and 'Video: miss' not in prompt
  assert not example['audio_present'] and example['video_present']
  assert builder.tokenizer.decode(pipeline.Featurizer(builder, ('audio', 'video', 'text'))(record)['tokens'].tolist()
                                  ).count('missing') == 0


def batches(config, info, count):
  iterator = iter(pipeline.train_dataset(config, info, batch_size=4))
  return [next(iterator) for _ in range(count)], iterator


def test_augmentation_is_seeded_by_run_seed_and_position(config, info):
  augmented = config.copy_and_resolve_references()
  augmented.augment.update(ALL_ON)
  first, iterator = batches(augmented, info, 2)
  again, _ = batches(augmented, info, 2)
  plain, _ = batches(config, info, 1)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]['audio'], plain[0]['audio'])
  assert not np.all(first[0]['audio_present'] & first[1]['audio_present'])  # some audio dropped
  resumed = iter(pipeline.train_dataset(augmented, info, batch_size=4))
  next(resumed)
  state = resumed.get_state()
  fresh = iter(pipeline.train_dataset(augmented, info, batch_size=4))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)['audio'], first[1]['audio'])
  other_seed = augmented.copy_and_resolve_references()
  other_seed.seed = 1
  assert not np.array_equal(batches(other_seed, info, 1)[0][0]['audio'], first[0]['audio'])


def test_text_augmentation_drops_and_mishears_words():
  sentence = 'the weather is lovely today and we went to the beach'
  out = augment.corrupt_text(sentence, np.random.default_rng(0), 0.3, 0.5)
  assert out != sentence and len(out.split()) < len(sentence.split())
  assert augment.corrupt_text(sentence, np.random.default_rng(0), 0.0, 0.0) == sentence


def test_corrupt_writes_decodable_noisy_blurred_copy(prepared_tiny, tmp_path):
  raw = os.path.join(os.path.dirname(prepared_tiny), 'raw')
  out = str(tmp_path / 'noisy')
  count = corrupt.corrupt_dataset(raw, out, snrs='5', blurs='4')
  clips = sorted(os.listdir(os.path.join(raw, 'video')))
  assert count == len(clips) == 40 and sorted(os.listdir(os.path.join(out, 'video'))) == clips
  for name in os.listdir(raw):
    if name.endswith('.csv'):
      assert filecmp.cmp(os.path.join(raw, name), os.path.join(out, name), shallow=False)
  for clip in clips[:3]:
    clean_audio, clean_frames = media.decode_clip(os.path.join(raw, 'video', clip), frame_size=32)
    noisy_audio, noisy_frames = media.decode_clip(os.path.join(out, 'video', clip), frame_size=32)
    assert 3.0 < snr_db(clean_audio, noisy_audio) < 7.0
    assert high_frequency_energy(noisy_frames) < 0.6 * high_frequency_energy(clean_frames)


def test_bad_augment_values_name_the_key_or_path(tmp_path, prepared_tiny):
  with pytest.raises(ValueError, match=r"config.augment.noise_snr='5,loud' is not a comma-separated list"):
    augment_config.parse({'noise_snr': '5,loud'})
  (tmp_path / 'readme.txt').write_text('no audio here')
  with pytest.raises(ValueError, match=f'noise folder {tmp_path} holds no audio files'):
    augment_config.parse({'noise_dir': str(tmp_path)})
  with pytest.raises(ValueError, match=r'config.augment.drop_audio=1.5 must lie in \[0, 1\]'):
    augment_config.parse({'drop_audio': 1.5})
  with pytest.raises(ValueError, match=r"unknown config.augment key\(s\) \['nosie_prob'\]"):
    augment_config.parse({'nosie_prob': 0.5})
  with pytest.raises(ValueError, match=r"--snr='x' is not a comma-separated list"):
    corrupt.corrupt_dataset(os.path.join(os.path.dirname(prepared_tiny), 'raw'), str(tmp_path / 'o'), snrs='x')
