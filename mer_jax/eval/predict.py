"""Prediction on raw clips: decode each file, prompt for the run's modalities, score, generate, format."""

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import numpy as np

from mer_jax.data import augment_config, media
from mer_jax.data.formats import mer2023
from mer_jax.data.text import PromptBuilder
from mer_jax.eval.evaluate import Predictor
from mer_jax.train import run


@dataclasses.dataclass(frozen=True)
class Clip:
  """A decoded clip and the transcript its prompt carries."""

  path: str
  audio: np.ndarray | None  # None: the file has no audio track
  frames: np.ndarray | None  # None: the file has no video stream
  sentence: str


def clip_name(path: str) -> str:
  """The clip's name as transcript CSVs give it: the file name without its extension."""
  return os.path.splitext(os.path.basename(path))[0]


def read_transcripts(path: str) -> dict[str, str]:
  """Clip name -> sentence from a CSV with `name` and `sentence` columns (MER2023's transcription.csv)."""
  return {row['name']: row['sentence'] for _, row in mer2023.read_csv(path, mer2023.TRANSCRIPT_COLUMNS)}


def clip_sentences(paths: list[str], transcript: str | None, transcripts: dict[str, str]) -> list[str]:
  """Each clip's transcript: `transcript` for all when given, else its CSV row, else empty."""
  if transcript is not None:
    return [transcript] * len(paths)
  return [transcripts.get(clip_name(path), '') for path in paths]


def decode_clips(paths: list[str], sentences: list[str], info: dict) -> list[Clip | media.MediaError]:
  """Each file decoded with the prepare options of the run's dataset info, or the MediaError it raised.

  A file without an audio track or without a video stream decodes with that part None (see clip_example).
  """
  decoded: list[Clip | media.MediaError] = []
  for path, sentence in zip(paths, sentences):
    try:
      audio, frames = media.decode_clip(path, sample_rate=info['audio']['sample_rate'],
                                        duration_s=info['duration_s'], num_frames=info['frames']['num_frames'],
                                        frame_size=info['frames']['size'], allow_audio_only=True,
                                        allow_video_only=True)
      if audio is None and frames is None:
        raise media.MediaError(path, 'no audio track and no video stream')
    except media.MediaError as error:
      decoded.append(error)
      continue
    decoded.append(Clip(path, audio, frames, sentence))
  return decoded


def clip_example(clip: Clip, builder: PromptBuilder, modalities: tuple[str, ...], info: dict,
                 text_can_miss: bool = False) -> dict[str, np.ndarray]:
  """The model's fixed-shape example for a clip: its prompt with no answer, plus its media.

  Audio or video the clip lacks is missing (zeros the model ignores; the prompt says 'missing'); so is
  an empty transcript when `text_can_miss` (a run trained with transcript dropout).
  """
  absent = {'audio': clip.audio is None, 'video': clip.frames is None,
            'text': text_can_miss and not clip.sentence.strip()}
  example = builder.build(clip.sentence, [], tuple(m for m in modalities if absent[m]))
  size, count = info['frames']['size'], info['frames']['num_frames']
  if 'audio' in modalities:
    samples = int(round(info['audio']['sample_rate'] * info['duration_s']))
    example['audio'] = np.zeros([samples], np.int16) if clip.audio is None else clip.audio
  if 'video' in modalities:
    example['frames'] = np.zeros([count, size, size, 3], np.uint8) if clip.frames is None else clip.frames
  return example


def build_batches(clips: list[Clip], builder: PromptBuilder, modalities: tuple[str, ...], batch_size: int,
                  info: dict, text_can_miss: bool = False) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """The clips' examples in order as (batch, number of real examples); the last is padded by repetition."""
  examples = [clip_example(clip, builder, modalities, info, text_can_miss) for clip in clips]
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    valid = len(chunk)
    chunk += [chunk[-1]] * (batch_size - valid)
    yield {k: np.stack([e[k] for e in chunk]) for k in chunk[0]}, valid


def normalised_scores(scores: np.ndarray) -> np.ndarray:
  """Softmax over labels of the mean answer log-likelihoods [B, C]: probability-like, each row sums to 1."""
  shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


def predict_clips(predictor: Predictor, clips: list[Clip]) -> list[dict[str, Any]]:
  """Per clip: scored label (headline), normalised scores, answer text, its parsed label and explanation, valence.

  A clip whose scores are not finite gets label None (shown as invalid), never the first label.
  """
  exp = predictor.experiment
  builder, labels = exp.builder, exp.labels
  results: list[dict[str, Any]] = []
  text_can_miss = augment_config.from_config(exp.config).drop['text'] > 0
  batches = build_batches(clips, builder, tuple(exp.config.model.modalities), exp.config.eval.batch_size, exp.info,
                          text_can_miss)
  for batch, valid in batches:
    out = predictor.predict(batch)
    probs = normalised_scores(out['scores'][:valid])
    for row in range(valid):
      generated = out['generated'][row].tolist()
      answer_label = builder.parse_label(generated)
      best = int(np.argmax(probs[row]))
      scored = bool(np.all(np.isfinite(probs[row])))
      results.append({
          'file': clips[len(results)].path,
          'label': labels[best] if scored else None,
          'score': float(probs[row, best]) if scored else float('nan'),
          'scores': {label: float(p) for label, p in zip(labels, probs[row])},
          'answer': builder.answer_text(generated),
          'explanation': builder.label_and_explanation(generated)[1],
          'answer_label': answer_label,
          'answer_valid': answer_label is not None,
          'valence': float(out['valence'][row]),
      })
  return results


def restore_predictor(workdir: str) -> tuple[Predictor, int]:
  """The Predictor of a run's latest usable checkpoint (params only, read-only) and its step.

  FileNotFoundError when there is none. Needs only the workdir, not the run's dataset.
  """
  experiment, step, params = run.restore_run(workdir)
  return Predictor(experiment, params), step


def predict_files(workdir: str, paths: list[str], sentences: list[str]) -> tuple[list[dict[str, Any]], int | None]:
  """Decodes and predicts each file with a run's latest checkpoint -> (one result per file, checkpoint step).

  The step is None when no file decoded (the model is then not loaded).
  """
  info = run.inference_info(workdir, run.inference_config(workdir))
  return predict_with(info, paths, sentences, lambda: restore_predictor(workdir))


def predict_with(info: dict, paths: list[str], sentences: list[str],
                 load_predictor: Callable[[], tuple[Predictor, int]]) -> tuple[list[dict[str, Any]], int | None]:
  """Decodes each file with `info`'s prepare settings and predicts those that decoded -> (results, step).

  load_predictor() gives the Predictor and its checkpoint step (a run's or a bundle's); it is called
  only when some file decoded, else the step is None.
  """
  decoded = decode_clips(paths, sentences, info)
  clips = [item for item in decoded if isinstance(item, Clip)]
  if not clips:
    return merge_results(decoded, []), None
  predictor, step = load_predictor()
  return merge_results(decoded, predict_clips(predictor, clips)), step


def merge_results(decoded: list[Clip | media.MediaError],
                  predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One result per input file in input order: its prediction, or {'file', 'error'} for a file that failed."""
  remaining = iter(predictions)
  return [{'file': item.path, 'error': item.reason} if isinstance(item, media.MediaError) else next(remaining)
          for item in decoded]


def _cell(text: str) -> str:
  """Text safe inside a markdown table cell."""
  return ' '.join(text.split()).replace('|', '\\|')


def format_table(results: list[dict[str, Any]]) -> str:
  """Predicted clips as a markdown table, then one line per file that could not be predicted."""
  lines: list[str] = []
  predicted = [r for r in results if 'error' not in r]
  if predicted:
    lines += ['| file | label (scored) | score | generated answer | parsed | valence |',
              '|---|---|---|---|---|---|']
    lines += [f"| {_cell(r['file'])} | {r['label'] or 'invalid'} | {r['score']:.3f} | {_cell(r['answer'])} | "
              f"{r['answer_label'] if r['answer_valid'] else 'invalid'} | {r['valence']:+.3f} |" for r in predicted]
  failed = [r for r in results if 'error' in r]
  if failed:
    if predicted:
      lines.append('')
    lines.append(f'{len(failed)} of {len(results)} clip(s) could not be predicted:')
    lines += [f"  {r['file']}: {r['error']}" for r in failed]
  return '\n'.join(lines)


def format_json(results: list[dict[str, Any]]) -> str:
  """The results as one JSON document: a list with one object per input file."""
  return json.dumps(results, indent=2)
