"""A pretrained LLM's chat template (tokenizer_config.json or chat_template.jinja), rendered around our prompt.

The template is rendered once for a single user turn whose content is a marker, with the
generation prompt added (as `apply_chat_template(..., add_generation_prompt=True)` does). The text
before the marker opens every prompt and the text after it closes it, so the prompt's own body
(headers, soft-token slots, transcript, question) is tokenized exactly as without a template.
"""

import dataclasses
import datetime
import json
import os
import shutil

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONFIG_FILE = 'tokenizer_config.json'
TEMPLATE_FILE = 'chat_template.jinja'
TOKENIZER_FILE = 'tokenizer.json'
# Files a pretrained tokenizer.json comes with: special tokens and the chat template.
COMPANION_FILES = (CONFIG_FILE, 'special_tokens_map.json', TEMPLATE_FILE)
_CONTENT_MARKER = '\x00mer_jax_prompt\x00'


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """The text a chat template puts before and after one user turn's content, up to the assistant's answer."""

  prefix: str
  suffix: str
  source: str


def copy_tokenizer(tokenizer_file: str, out_dir: str) -> None:
  """Copies a tokenizer.json to out_dir/tokenizer.json, with the companion files that lie beside it."""
  shutil.copyfile(tokenizer_file, os.path.join(out_dir, TOKENIZER_FILE))
  source_dir = os.path.dirname(os.path.abspath(tokenizer_file))
  for name in COMPANION_FILES:
    if os.path.exists(os.path.join(source_dir, name)):
      shutil.copyfile(os.path.join(source_dir, name), os.path.join(out_dir, name))


def special_tokens(tokenizer_dir: str) -> dict[str, str]:
  """The bos/eos/pad token strings named in the directory's tokenizer_config.json ({} when absent)."""
  config = _read_config(tokenizer_dir)
  tokens: dict[str, str] = {}
  for role in ('bos', 'eos', 'pad'):
    value = config.get(f'{role}_token')
    if isinstance(value, dict):
      value = value.get('content')
    if isinstance(value, str) and value:
      tokens[role] = value
  return tokens


def _read_config(tokenizer_dir: str) -> dict:
  path = os.path.join(tokenizer_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise ValueError(f'cannot read {path}: {error}') from error


def template_source(tokenizer_dir: str) -> tuple[str, str] | None:
  """(template text, where it came from) from chat_template.jinja or tokenizer_config.json; None if neither has one."""
  path = os.path.join(tokenizer_dir, TEMPLATE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return f.read(), path
  template = _read_config(tokenizer_dir).get('chat_template')
  if isinstance(template, list):
    named = {entry.get('name'): entry.get('template') for entry in template if isinstance(entry, dict)}
    template = named.get('default')
  if isinstance(template, str) and template:
    return template, os.path.join(tokenizer_dir, CONFIG_FILE)
  return None


def _environment() -> ImmutableSandboxedEnvironment:
  """A sandboxed Jinja environment with the globals and filters chat templates expect."""

  def raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters['tojson'] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
  env.globals['raise_exception'] = raise_exception
  env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


def load_chat_template(tokenizer_dir: str) -> ChatTemplate | None:
  """The directory's chat template split around one user turn, or None when it has no template."""
  found = template_source(tokenizer_dir)
  if found is None:
    return None
  text, source = found
  tokens = special_tokens(tokenizer_dir)
  try:
    rendered = _environment().from_string(text).render(
        messages=[{'role': 'user', 'content': _CONTENT_MARKER}], add_generation_prompt=True,
        bos_token=tokens.get('bos', ''), eos_token=tokens.get('eos', ''))
  except jinja2.TemplateError as error:
    raise ValueError(f'chat template in {source} does not render: {error}') from error
  if rendered.count(_CONTENT_MARKER) != 1:
    raise ValueError(f'chat template in {source} does not place the user message exactly once')
  prefix, suffix = rendered.split(_CONTENT_MARKER)
  return ChatTemplate(prefix, suffix, source)
