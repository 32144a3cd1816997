"""The fixed cue phrases of the synthetic clips' descriptions (EMER/MERR style) and how a description is written.

Each cue kind has one short sentence per planted value, so a description names exactly one phrase
per kind and the phrases can be found again in generated text (see mer_jax.eval.cues):

- voice, by arousal level: 2 'The voice is loud and fast.', 1 'The voice is steady.',
  0 'The voice is quiet and slow.'
- face, by mouth group: 1 'The face shows a smile.', 0 'The face shows a flat mouth.',
  -1 'The face shows a frown.'
- text, by whether the transcript names the emotion: 'The words name the emotion.' or
  'The words name no emotion.'

A description is the three sentences in the order voice, face, text.
"""

CUE_PHRASES: dict[str, dict[int | bool, str]] = {
    'voice': {2: 'The voice is loud and fast.', 1: 'The voice is steady.', 0: 'The voice is quiet and slow.'},
    'face': {1: 'The face shows a smile.', 0: 'The face shows a flat mouth.', -1: 'The face shows a frown.'},
    'text': {True: 'The words name the emotion.', False: 'The words name no emotion.'},
}
CUE_KINDS = tuple(CUE_PHRASES)


def describe(arousal: int, face_group: int, text_names_emotion: bool) -> str:
  """The description of a clip's planted cues: one fixed sentence each for voice, face and text."""
  return ' '.join([CUE_PHRASES['voice'][arousal], CUE_PHRASES['face'][face_group],
                   CUE_PHRASES['text'][text_names_emotion]])
