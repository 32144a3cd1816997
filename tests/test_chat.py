"""A pretrained tokenizer's chat template and special tokens build the prompts as transformers would."""

import json
import os

import ml_collections
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mer_jax.data import chat, pipeline, text

LABELS = ['neutral', 'angry', 'happy', 'sad', 'worried', 'surprise']
QWEN_SPECIAL = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_SPECIAL = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def write_tokenizer_dir(directory: str, special: list[str], config: dict) -> str:
  """A byte-level BPE tokenizer.json with `special` tokens plus a tokenizer_config.json holding `config`."""
  os.makedirs(directory, exist_ok=True)
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(['Audio: Video: Transcript: Question: Which emotion?'] * 5 + LABELS, trainer=trainer)
  path = os.path.join(directory, 'tokenizer.json')
  tokenizer.save(path)
  with open(os.path.join(directory, chat.CONFIG_FILE), 'w') as f:
    json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', **config}, f)
  return path


@pytest.fixture(scope='module')
def qwen_dir(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp('qwen'))
  write_tokenizer_dir(directory, QWEN_SPECIAL, {'chat_template': QWEN_TEMPLATE, 'eos_token': '<|im_end|>',
                                                'pad_token': '<|endoftext|>', 'bos_token': None})
  return directory


@pytest.fixture(scope='module')
def llama3_dir(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp('llama3'))
  write_tokenizer_dir(directory, LLAMA3_SPECIAL, {'chat_template': LLAMA3_TEMPLATE, 'bos_token': '<|begin_of_text|>',
                                                  'eos_token': '<|eot_id|>'})
  return directory


@pytest.mark.parametrize('name', ['qwen_dir', 'llama3_dir'])
def test_template_wraps_content_as_transformers_renders_it(name, request):
  directory = request.getfixturevalue(name)
  template = chat.load_chat_template(directory)
  reference = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
  content = 'Audio: Question: Which emotion does the person express? Answer:'
  rendered = reference.apply_chat_template([{'role': 'user', 'content': content}], tokenize=False,
                                           add_generation_prompt=True)
  assert template.prefix + content + template.suffix == rendered


def test_prompt_is_wrapped_and_answer_ends_with_the_turn_end(qwen_dir):
  tokenizer = text.TextTokenizer(os.path.join(qwen_dir, 'tokenizer.json'))
  assert tokenizer.eos_id == tokenizer.tokenizer.token_to_id('<|im_end|>')
  assert tokenizer.pad_id == tokenizer.tokenizer.token_to_id('<|endoftext|>')
  layout = text.PromptLayout(('audio', 'text'), 3, 0, 8, 256)
  plain = text.PromptBuilder(tokenizer, layout, LABELS)
  template = chat.load_chat_template(qwen_dir)
  wrapped = text.PromptBuilder(tokenizer, layout, LABELS, template)
  plain_ids, plain_soft = plain.prompt_ids('I am happy.')
  ids, soft = wrapped.prompt_ids('I am happy.')
  prefix, suffix = tokenizer.encode(template.prefix), tokenizer.encode(template.suffix)
  assert prefix[0] == tokenizer.tokenizer.token_to_id('<|im_start|>')
  assert ids == prefix + plain_ids[1:] + suffix
  assert soft == [p - 1 + len(prefix) for p in plain_soft]
  assert all(ids[p] == tokenizer.pad_id for p in soft)
  assert wrapped.answers[2][-1] == tokenizer.eos_id


def test_llama3_prefix_starts_with_bos(llama3_dir):
  tokenizer = text.TextTokenizer(os.path.join(llama3_dir, 'tokenizer.json'))
  template = chat.load_chat_template(llama3_dir)
  assert tokenizer.encode(template.prefix)[0] == tokenizer.bos_id == tokenizer.tokenizer.token_to_id('<|begin_of_text|>')
  assert tokenizer.eos_id == tokenizer.tokenizer.token_to_id('<|eot_id|>')


def test_template_file_wins_and_missing_template_gives_none(tmp_path, qwen_dir):
  assert chat.load_chat_template(str(tmp_path)) is None
  (tmp_path / chat.TEMPLATE_FILE).write_text('<s>{{ messages[0].content }}[/s]{% if add_generation_prompt %}>>{% endif %}')
  template = chat.load_chat_template(str(tmp_path))
  assert (template.prefix, template.suffix) == ('<s>', '[/s]>>')
  assert template.source == str(tmp_path / chat.TEMPLATE_FILE)


def test_broken_templates_are_refused_naming_the_file(tmp_path):
  (tmp_path / chat.TEMPLATE_FILE).write_text("{{ raise_exception('only system turns') }}")
  with pytest.raises(ValueError, match=f'{chat.TEMPLATE_FILE}.*only system turns'):
    chat.load_chat_template(str(tmp_path))
  (tmp_path / chat.TEMPLATE_FILE).write_text('no content here')
  with pytest.raises(ValueError, match='exactly once'):
    chat.load_chat_template(str(tmp_path))


def config_with(data_dir: str, tokenizer: str = '', init_from: str = '', chat_template: str = 'auto'):
  return ml_collections.ConfigDict({'data': {'dir': data_dir, 'tokenizer': tokenizer, 'chat_template': chat_template},
                                    'model': {'llm': {'init_from': init_from}}})


def test_tokenizer_and_template_follow_the_pretrained_llm(tmp_path, qwen_dir):
  data_dir = str(tmp_path)
  assert pipeline.tokenizer_path(config_with(data_dir)) == os.path.join(data_dir, 'tokenizer.json')
  llm_tokenizer = os.path.join(qwen_dir, 'tokenizer.json')
  assert pipeline.tokenizer_path(config_with(data_dir, init_from=qwen_dir)) == llm_tokenizer
  assert pipeline.tokenizer_path(config_with(data_dir, tokenizer='x/t.json', init_from=qwen_dir)) == 'x/t.json'
  assert pipeline.chat_template(config_with(data_dir), llm_tokenizer).prefix.startswith('<|im_start|>system')
  assert pipeline.chat_template(config_with(data_dir, chat_template='none'), llm_tokenizer) is None
  with pytest.raises(ValueError, match="chat_template='chatml'"):
    pipeline.chat_template(config_with(data_dir, chat_template='chatml'), llm_tokenizer)
