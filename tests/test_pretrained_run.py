"""A run on a pretrained Qwen2-style LLM dir: its tokenizer and chat template build the prompts, LoRA trains, exports load."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from mer_jax import export
from mer_jax.data import pipeline, text
from mer_jax.interop import weights
from mer_jax.train.trainer import train

from configs import demo

# A template in the chat format of released models, written with this tokenizer's own special tokens.
TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
            "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope='module')
def qwen_dir(tmp_path_factory, prepared_tiny) -> str:
  """A random tiny Qwen2 (tied embeddings, q/k/v bias) with a tokenizer.json and a chat template, as released."""
  path = str(tmp_path_factory.mktemp('qwen'))
  tokenizer_file = os.path.join(path, 'tokenizer.json')
  text.build_tokenizer(['The voice is steady.', 'I am so happy about this.'], tokenizer_file, vocab_size=400)
  vocab_size = text.TextTokenizer(tokenizer_file).vocab_size + 16  # released tables are padded past the tokenizer
  with open(os.path.join(path, 'tokenizer_config.json'), 'w') as f:
    json.dump({'chat_template': TEMPLATE, 'bos_token': '<bos>', 'eos_token': '<eos>'}, f)
  config = transformers.Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(config).save_pretrained(path)
  return path


@pytest.fixture(scope='module')
def run(qwen_dir, prepared_tiny, tmp_path_factory):
  """The tiny config on qwen_dir with LoRA (rank 4 on q and v), the LLM frozen, trained 2 steps."""
  config = demo.get_config('variant=tiny')
  config.data.dir = prepared_tiny
  config.model.llm.update(weights.checkpoint_config('llm', qwen_dir))
  config.model.llm.init_from = qwen_dir
  config.model.lora.update(rank=4, alpha=8.0)
  config.data.seq_len = 96  # the template and a tokenizer trained on other text lengthen the prompt
  config.train.trainable = ('audio', 'vision', 'fusion', 'valence_head')
  config.train.steps = 2
  config.train.eval_every = 0
  workdir = str(tmp_path_factory.mktemp('pretrained') / 'run')
  train(config, workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json())
  return config, workdir


def test_prompts_use_the_llms_tokenizer_and_template(run, qwen_dir):
  config, _ = run
  info = pipeline.load_info(config.data.dir)
  builder = pipeline.prompt_builder(config, info)
  assert builder.tokenizer.path == os.path.join(qwen_dir, 'tokenizer.json')
  tokens = pipeline.Featurizer(builder, tuple(config.model.modalities))(
      pipeline.open_split(config.data, info, 'test')[0])['tokens'].tolist()
  prompt = builder.tokenizer.tokenizer.decode(builder.prompt_ids('')[0], skip_special_tokens=False)
  assert tokens[0] == builder.tokenizer.bos_id and prompt.startswith('<bos>user: Audio:')
  assert prompt.endswith('Answer:<eos>assistant:')


def test_exports_of_the_pretrained_run_load(run, qwen_dir, tmp_path):
  config, workdir = run
  hf_out, bundle_out = str(tmp_path / 'hf'), str(tmp_path / 'bundle')
  export.export_hf(workdir, hf_out, 'float32')
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_out)
  pretrained = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir)
  assert type(model).__name__ == 'Qwen2ForCausalLM' and model.config.vocab_size == pretrained.config.vocab_size
  assert sorted(n for n in os.listdir(hf_out) if n.startswith('tokenizer')) == ['tokenizer.json',
                                                                                'tokenizer_config.json']
  # LoRA trained on q and v only: those kernels moved, the rest of the frozen backbone did not.
  changed = {name: not torch.equal(value, pretrained.state_dict()[name]) for name, value in model.state_dict().items()}
  assert changed['model.layers.0.self_attn.q_proj.weight'] and changed['model.layers.0.self_attn.v_proj.weight']
  assert not changed['model.layers.0.self_attn.k_proj.weight'] and not changed['model.embed_tokens.weight']
  export.export_bundle(workdir, bundle_out, 'float32')
  predictor = export.load_bundle(bundle_out)
  builder = predictor.experiment.builder
  assert builder.chat_template is not None and builder.tokenizer.eos_id == builder.tokenizer.tokenizer.token_to_id('<eos>')
  batch, _ = next(pipeline.eval_batches(config, pipeline.load_info(config.data.dir), 'test', config.eval.batch_size))
  out = predictor.predict(batch)
  assert out['scores'].shape == (config.eval.batch_size, len(predictor.experiment.labels))
  assert np.isfinite(out['scores']).all()
