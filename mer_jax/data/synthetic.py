"""Writes the synthetic demo dataset (drawn faces, synthesized voices, transcripts) in the MER2023 layout.

The emotion is spread over the modalities so that no single one is enough:

- face (video) carries valence through the mouth: a smile for happy and surprise, a flat mouth
  for neutral and worried, a frown for angry and sad. The curvature is the group's level (+1, 0,
  -1) plus the clip's valence deviation from its label mean (clipped to +-0.25), so it scales
  with the valence score within a group while the two labels of a group share one face
  distribution and the three groups never overlap. Face position, size, skin tone and background
  are jittered per clip; the mouth opens and closes with the voice's syllables (no label
  information in that).
- voice (audio) carries arousal in three levels: high for angry and surprise, mid for happy and
  worried, low for neutral and sad. The signal is a harmonic series on an F0 contour, shaped by
  per-syllable vowel formants and a syllable amplitude envelope; pitch, energy, syllable rate and
  pitch excursion rise with arousal. Each clip has its own "speaker" (base pitch +-10%, rate and
  loudness jitter, formant scale) and a little noise; the three levels stay clearly separable.
- text: the transcript names the emotion ("I am so happy about this.") in 30% of each label's
  clips; the others use neutral-content sentences that carry no label information.

Face x voice determine the label: smile+high=surprise, smile+mid=happy, flat+mid=worried,
flat+low=neutral, frown+high=angry, frown+low=sad; each alone leaves a pair confused. Valence is
a per-label mean (happy .7, surprise .4, neutral 0, worried -.3, angry -.6, sad -.7) plus
N(0, .1), clipped to [-1, 1]. Labels are balanced, splits stratified, and everything is seeded:
the same seed gives identical CSVs and identical decoded media.

reason.csv (name,reason) holds each clip's description of the cues really planted in it, made of
the fixed phrases of mer_jax.data.descriptions, e.g. "The voice is loud and fast. The face shows a
smile. The words name no emotion."
"""

import csv
import multiprocessing
import os
import shutil
import time

import av
import numpy as np

from mer_jax.data.descriptions import describe
from mer_jax.data.formats.mer2023 import LABELS, REASON_FILE

SAMPLE_RATE = 16000
VALENCE_MEANS = {'neutral': 0.0, 'angry': -0.6, 'happy': 0.7, 'sad': -0.7, 'worried': -0.3, 'surprise': 0.4}
VALENCE_STD = 0.1
TEXT_NAMED_FRACTION = 0.3

FACE_GROUP = {'happy': 1, 'surprise': 1, 'neutral': 0, 'worried': 0, 'angry': -1, 'sad': -1}
FACE_CUES = {1: 'smile (mouth corners up)', 0: 'flat mouth', -1: 'frown (mouth corners down)'}
AROUSAL_LEVEL = {'neutral': 0, 'sad': 0, 'happy': 1, 'worried': 1, 'angry': 2, 'surprise': 2}
VOICE_CUES = {
    0: 'low arousal voice (low pitch, quiet, slow syllables)',
    1: 'mid arousal voice (medium pitch, loudness and syllable rate)',
    2: 'high arousal voice (high pitch, loud, fast syllables, wide pitch excursions)',
}

# Voice parameters per arousal level: base F0 (Hz), RMS level, syllables/s, accent (semitones), spectral tilt.
_F0 = (105.0, 150.0, 215.0)
_LEVEL = (0.05, 0.11, 0.24)
_RATE = (2.6, 4.0, 6.0)
_ACCENT = (1.0, 3.0, 6.0)
_TILT = (1.6, 1.3, 1.0)
_BLOCK = 40
_VOWELS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840), (660, 1720))

EMOTION_SENTENCES = {
    'neutral': ('I feel neutral about all of this.', 'Honestly, I am neutral on that.',
                'My view is neutral, nothing more.'),
    'angry': ('I am so angry about this.', 'This makes me really angry.', 'I am angry that you did that.'),
    'happy': ('I am so happy about this.', 'This makes me really happy.', 'I am happy that you came.'),
    'sad': ('I am so sad about this.', 'This makes me really sad.', 'I feel sad that it ended.'),
    'worried': ('I am so worried about this.', 'This makes me really worried.',
                'I am worried that it will fail.'),
    'surprise': ('What a surprise this is.', 'This is a real surprise to me.', 'That was quite a surprise.'),
}
NEUTRAL_SENTENCES = (
    'The meeting starts at nine tomorrow.', 'I took the bus to the station.',
    'We need to buy milk and bread.', 'The report is on the second shelf.',
    'She moved to a new flat last year.', 'The train leaves from platform four.',
    'I read the letter this morning.', 'They painted the kitchen white.',
    'He is going to call you later.', 'The shop closes at six on Sundays.',
    'We walked along the river.', 'My brother works in a bank.',
    'Please send me the file again.', 'The weather will change on Friday.',
    'I left my keys on the table.', 'There are three chairs in the room.',
    'The package arrived this afternoon.', 'Our class has twenty students.',
    'I will cook dinner tonight.', 'The printer is out of paper.',
)


def planted_cues(label: str, sentence: str = '') -> dict[str, str]:
  """The cues the synthetic data plants for `label` (face, voice, whether the text names it) and their description."""
  if label not in FACE_GROUP:
    raise ValueError(f'unknown label {label!r}; valid labels: {list(LABELS)}')
  named = sentence in EMOTION_SENTENCES[label]
  return {
      'label': label,
      'face': FACE_CUES[FACE_GROUP[label]],
      'voice': VOICE_CUES[AROUSAL_LEVEL[label]],
      'text': f'transcript names the emotion: "{sentence}"' if named else 'transcript carries no emotion cue',
      'description': describe(AROUSAL_LEVEL[label], FACE_GROUP[label], named),
  }


def _syllables(rng: np.random.Generator, duration_s: float, rate: float) -> list[tuple[float, float, int]]:
  """Syllable (onset, length, vowel index) triples covering the clip."""
  out = []
  onset = rng.uniform(0.05, 0.2)
  while onset < duration_s - 0.12:
    length = min(0.7 / rate * rng.uniform(0.85, 1.15), duration_s - onset)
    out.append((onset, length, int(rng.integers(len(_VOWELS)))))
    onset += rng.uniform(0.8, 1.2) / rate
  return out


def _envelope(times: np.ndarray, syllables: list[tuple[float, float, int]]) -> np.ndarray:
  """Syllable amplitude envelope (raised sine per syllable) at `times`."""
  env = np.zeros_like(times)
  for onset, length, _ in syllables:
    phase = (times - onset) / length
    inside = (phase >= 0) & (phase <= 1)
    env[inside] = np.maximum(env[inside], np.sin(np.pi * phase[inside]) ** 2)
  return env


def _voice(rng: np.random.Generator, arousal: int, duration_s: float) -> tuple[np.ndarray, list]:
  """A voice-like float32 waveform at SAMPLE_RATE and its syllables."""
  n = int(round(duration_s * SAMPLE_RATE))
  t = np.arange(n) / SAMPLE_RATE
  f0_base = _F0[arousal] * rng.uniform(0.9, 1.1)
  rate = _RATE[arousal] * rng.uniform(0.9, 1.1)
  level = _LEVEL[arousal] * rng.uniform(0.9, 1.1)
  formant_scale = rng.uniform(0.95, 1.1)
  syllables = _syllables(rng, duration_s, rate)

  semitones = -1.5 * t / duration_s + 0.2 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi))
  f1 = np.full(n, 500.0)
  f2 = np.full(n, 1500.0)
  for onset, length, vowel in syllables:
    phase = (t - onset) / length
    inside = (phase >= 0) & (phase <= 1)
    semitones[inside] += _ACCENT[arousal] * rng.uniform(0.6, 1.0) * np.sin(np.pi * phase[inside])
    f1[inside], f2[inside] = _VOWELS[vowel]
  f0 = f0_base * 2.0 ** (semitones / 12)
  phase = np.mod(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE, 2 * np.pi).astype(np.float32)

  # Harmonic amplitudes change slowly: evaluate them once per block of _BLOCK samples.
  blocks = n // _BLOCK
  centres = np.arange(blocks) * _BLOCK + _BLOCK // 2
  harmonics = np.arange(1, int(4000 / f0.min()) + 1)[:, None]
  freqs = harmonics * f0[centres]
  formants = [(f1[centres] * formant_scale, 90.0), (f2[centres] * formant_scale, 120.0),
              (2500.0 * formant_scale, 200.0)]
  gain = sum(1.0 / (1.0 + ((freqs - fc) / bw) ** 2) for fc, bw in formants)
  amps = (gain * harmonics ** -_TILT[arousal] * (freqs < 7000)).astype(np.float32)
  block_phase = phase[:blocks * _BLOCK].reshape(1, blocks, _BLOCK)
  sines = np.sin(harmonics[:, :, None].astype(np.float32) * block_phase)
  source = np.zeros(n, np.float64)
  source[:blocks * _BLOCK] = np.einsum('kb,kbt->bt', amps, sines).reshape(-1)

  env = _envelope(t, syllables)
  voiced = source * env
  voiced *= level / max(np.sqrt(np.mean(voiced[env > 0.1] ** 2)), 1e-8)
  noise = rng.normal(0, 1, n) * (0.002 + 0.05 * level * env)
  return np.clip(voiced + noise, -0.99, 0.99).astype(np.float32), syllables


def _face_base(size: int, look: dict) -> np.ndarray:
  """A float RGB image of the background and the face without its mouth."""
  yy, xx = look['grid']
  img = np.empty((size, size, 3), np.float32)
  img[:] = look['background'] * (0.85 + 0.15 * yy / size)[..., None]
  cx, cy, r = look['cx'], look['cy'], look['r']
  img[((xx - cx) / (0.82 * r)) ** 2 + ((yy - cy) / r) ** 2 <= 1] = look['skin']
  for side in (-1, 1):
    ex, ey = cx + side * 0.36 * r, cy - 0.22 * r
    img[((xx - ex) / (0.16 * r)) ** 2 + ((yy - ey) / (0.10 * r)) ** 2 <= 1] = (245, 245, 245)
    img[(xx - ex) ** 2 + (yy - ey) ** 2 <= (0.07 * r) ** 2] = (30, 25, 20)
    img[(np.abs(xx - ex) <= 0.18 * r) & (np.abs(yy - (ey - 0.2 * r)) <= 0.035 * r)] = look['skin'] * 0.45
  return img


def _face_frame(base: np.ndarray, look: dict, curvature: float, opening: float) -> np.ndarray:
  """One uint8 RGB frame: `base` plus a mouth; `curvature` > 0 smiles, `opening` in [0, 1] opens it."""
  yy, xx = look['grid']
  cx, r = look['cx'], look['r']
  half_width, bend, thick = 0.45 * r, 0.28 * r * curvature, 0.06 * r
  u = (xx - cx) / half_width
  in_width = np.abs(u) <= 1
  centre_line = look['cy'] + 0.48 * r + bend * (0.5 - u ** 2)
  lower_line = centre_line + opening * 0.2 * r * (1 - u ** 2)
  img = base.copy()
  img[in_width & (yy >= centre_line - thick) & (yy <= lower_line + thick)] = look['lips']
  img[in_width & (yy > centre_line + thick) & (yy < lower_line - thick * 0.5)] = (45, 12, 18)
  return np.clip(img, 0, 255).astype(np.uint8)


def _face_look(rng: np.random.Generator, size: int) -> dict:
  """Per-clip face position, size, skin tone, lip and background colours."""
  skin = np.array([232, 196, 170]) + rng.uniform(0, 1) * (np.array([150, 100, 72]) - [232, 196, 170])
  return {
      'cx': size * (0.5 + rng.uniform(-0.05, 0.05)),
      'cy': size * (0.5 + rng.uniform(-0.05, 0.05)),
      'r': size * rng.uniform(0.34, 0.40),
      'skin': skin,
      'lips': skin * np.array([0.45, 0.22, 0.25]),
      'background': rng.uniform(110, 235, size=3),
      'grid': np.mgrid[0:size, 0:size].astype(np.float32) + 0.5,
  }


def _write_clip(job: dict) -> None:
  """Renders and encodes one clip (H.264 video + AAC audio) to job['path']."""
  rng = np.random.default_rng([job['seed'], job['index']])
  label, fps, size, duration_s = job['label'], job['fps'], job['size'], job['duration_s']
  audio, syllables = _voice(rng, AROUSAL_LEVEL[label], duration_s)
  look = _face_look(rng, size)
  base = _face_base(size, look)
  curvature = FACE_GROUP[label] + np.clip(job['valence'] - VALENCE_MEANS[label], -0.25, 0.25)
  num_frames = int(round(duration_s * fps))
  openings = _envelope(np.arange(num_frames) / fps + 0.5 / fps, syllables)

  with av.open(job['path'], 'w', format='mp4') as container:
    video = container.add_stream('libx264', rate=fps)
    video.width = video.height = size
    video.pix_fmt = 'yuv420p'
    video.options = {'preset': 'veryfast', 'crf': '18'}
    video.codec_context.thread_count = 1
    sound = container.add_stream('aac', rate=SAMPLE_RATE, layout='mono')
    sound.bit_rate = 48000
    for i, opening in enumerate(openings):
      frame = av.VideoFrame.from_ndarray(_face_frame(base, look, curvature, float(opening)), format='rgb24')
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    frame = av.AudioFrame.from_ndarray(audio[None, :], format='fltp', layout='mono')
    frame.sample_rate = SAMPLE_RATE
    frame.pts = 0
    container.mux(sound.encode(frame))
    container.mux(sound.encode(None))


def _plan(num_clips: int, seed: int, test_fraction: float) -> list[dict]:
  """Per-clip name, split, label, valence and sentence: balanced labels, stratified splits."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_clips) % len(LABELS))
  valences = rng.normal(0, VALENCE_STD, num_clips)
  clips = []
  for i in range(num_clips):
    label = LABELS[labels[i]]
    valence = float(np.clip(VALENCE_MEANS[label] + valences[i], -1, 1))
    clips.append({'index': i, 'name': f'sample_{i + 1:05d}', 'label': label, 'valence': round(valence, 4)})
  for label_id, label in enumerate(LABELS):
    members = rng.permutation(np.flatnonzero(labels == label_id))
    num_test = int(round(len(members) * test_fraction))
    num_named = int(round(len(members) * TEXT_NAMED_FRACTION))
    for rank, i in enumerate(members):
      clips[i]['split'] = 'test' if rank < num_test else 'train'
    for rank, i in enumerate(rng.permutation(members)):
      pool = EMOTION_SENTENCES[label] if rank < num_named else NEUTRAL_SENTENCES
      clips[i]['sentence'] = pool[int(rng.integers(len(pool)))]
  return clips


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
  """Writes a CSV with '\\n' line endings."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)


def write_dataset(out_dir: str, num_clips: int = 1000, seed: int = 0, test_fraction: float = 0.2,
                  duration_s: float = 2.0, fps: int = 10, size: int = 96, workers: int = 2) -> dict:
  """Writes `num_clips` synthetic clips plus label, transcript and reason CSVs to `out_dir`; returns a summary."""
  start = time.perf_counter()
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(
      os.path.join(out_dir, 'train-label.csv')):
    raise FileExistsError(f'{out_dir} exists and is not a synthetic dataset; choose an empty or new one')
  video_dir = os.path.join(out_dir, 'video')
  shutil.rmtree(video_dir, ignore_errors=True)
  os.makedirs(video_dir)

  clips = _plan(num_clips, seed, test_fraction)
  jobs = [{'seed': seed, 'index': c['index'], 'label': c['label'], 'valence': c['valence'],
           'path': os.path.join(video_dir, c['name'] + '.mp4'), 'fps': fps, 'size': size,
           'duration_s': duration_s} for c in clips]
  if workers > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      for _ in pool.imap_unordered(_write_clip, jobs, chunksize=8):
        pass
  else:
    for job in jobs:
      _write_clip(job)

  for split in ('train', 'test'):
    rows = [[c['name'], c['label'], f"{c['valence']:.4f}"] for c in clips if c['split'] == split]
    _write_csv(os.path.join(out_dir, f'{split}-label.csv'), ['name', 'discrete', 'valence'], rows)
  _write_csv(os.path.join(out_dir, 'transcription.csv'), ['name', 'sentence'],
             [[c['name'], c['sentence']] for c in clips])
  _write_csv(os.path.join(out_dir, REASON_FILE), ['name', 'reason'],
             [[c['name'], planted_cues(c['label'], c['sentence'])['description']] for c in clips])
  named = sum(c['sentence'] in EMOTION_SENTENCES[c['label']] for c in clips)
  return {
      'out_dir': os.path.abspath(out_dir),
      'num_clips': num_clips,
      'splits': {s: sum(c['split'] == s for c in clips) for s in ('train', 'test')},
      'label_counts': {label: sum(c['label'] == label for c in clips) for label in LABELS},
      'text_named_fraction': named / max(num_clips, 1),
      'seconds': time.perf_counter() - start,
  }
