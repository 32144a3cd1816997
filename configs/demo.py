"""Demo config: a tiny multimodal emotion LLM trained from the synthetic MER2023-layout dataset on CPU.

Usage: --config configs/demo.py[:modalities=audio,video,text] --config.train.steps=200
Sweep: get_hyper(h) below, run by `mer-jax sweep`.
"""

import ml_collections

from mer_jax.data.augment_config import default_config as augment_defaults
from mer_jax.sweep import Hyper, Point

ALL_MODALITIES = ('audio', 'video', 'text')


def parse_modalities(arg: str | None) -> tuple[str, ...]:
  """Parses 'audio,video' style strings into a tuple of known modality names."""
  if not arg:
    return ALL_MODALITIES
  chosen = tuple(m.strip() for m in arg.split(',') if m.strip())
  unknown = [m for m in chosen if m not in ALL_MODALITIES]
  if unknown or not chosen:
    raise ValueError(f'unknown modalities {unknown} in {arg!r}; choose from {ALL_MODALITIES}')
  return chosen


def parse_options(arg: str | None) -> dict[str, str]:
  """Parses 'modalities=audio,video,variant=tiny': a part without '=' extends the previous value."""
  options: dict[str, str] = {}
  key = None
  for part in (arg or '').split(','):
    if '=' in part:
      key, value = part.split('=', 1)
      options[key.strip()] = value.strip()
    elif key is not None and part.strip():
      options[key] += ',' + part.strip()
    elif part.strip():
      raise ValueError(f'config option {part!r} in {arg!r} is not key=value')
  return options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the demo config; `arg` is 'key=value,...' with key in {modalities, variant}."""
  options = parse_options(arg)
  unknown_options = set(options) - {'modalities', 'variant'}
  if unknown_options:
    raise ValueError(f'unknown config options {sorted(unknown_options)}; valid: modalities, variant')
  variant = options.get('variant', 'demo')
  if variant not in ('demo', 'tiny'):
    raise ValueError(f"unknown variant {variant!r}; choose 'demo' or 'tiny'")
  tiny = variant == 'tiny'

  c = ml_collections.ConfigDict()
  c.seed = 0

  # Answers carry the dataset's reasons (label first: ' <label>. <reason>'; see data/text.py). Overriding
  # it also lengthens data.seq_len and eval.max_new_tokens below, unless those are set explicitly.
  explanations = ml_collections.FieldReference(False)

  c.data = ml_collections.ConfigDict()
  c.data.dir = 'runs/demo/data'          # a prepared dataset (mer-jax prepare --out)
  c.data.tokenizer = ''                  # '' = <model.llm.init_from>/tokenizer.json if any, else <data.dir>/tokenizer.json
  c.data.chat_template = 'auto'          # 'auto': the tokenizer's chat template (tokenizer_config.json), if any; 'none'
  c.data.train_split = 'train'          # a TFDS split expression: 'train', 'train[:10%]', 'session1+session2'
  c.data.mixture = ''                    # more datasets mixed into training: 'DIR[@SPLIT][=WEIGHT],...' (weight vs 1)
  c.data.pseudo_labels = ''              # pseudo-labelled clips of data.dir mixed in: 'FILE.csv[=WEIGHT],...' (weight vs 1)
  c.data.val_fraction = 0.1              # validation carved from the train split
  c.data.max_transcript_tokens = 24
  c.data.explanations = explanations
  c.data.seq_len = 64 + 48 * explanations.to_int()  # 64; 112 with explanations (the demo's answers reach 47)
  c.data.shuffle_seed = 0
  c.data.worker_threads = 2

  c.model = ml_collections.ConfigDict()
  c.model.modalities = parse_modalities(options.get('modalities'))
  c.model.dtype = 'float32'              # compute dtype
  c.model.param_dtype = 'float32'
  c.model.dropout = 0.1
  c.model.remat = 'none'                 # 'none' | 'full' | 'dots'

  c.model.audio = ml_collections.ConfigDict()
  c.model.audio.sample_rate = 16000
  c.model.audio.n_fft = 400
  c.model.audio.hop_length = 160
  c.model.audio.n_mels = 80
  c.model.audio.width = 64 if not tiny else 32
  c.model.audio.layers = 2 if not tiny else 1
  c.model.audio.heads = 4 if not tiny else 2
  c.model.audio.mlp = 256 if not tiny else 64
  c.model.audio.max_frames = 1500        # Whisper's positional table size (30 s)
  c.model.audio.num_soft_tokens = 4
  c.model.audio.init_from = ''           # a Hugging Face Whisper dir whose encoder initialises this one
  c.model.audio.param_dtype = ''         # '' = model.param_dtype (e.g. 'bfloat16' for a frozen encoder)

  c.model.vision = ml_collections.ConfigDict()
  c.model.vision.image_size = 48 if not tiny else 32
  c.model.vision.patch_size = 8
  c.model.vision.width = 64 if not tiny else 32
  c.model.vision.layers = 2 if not tiny else 1
  c.model.vision.heads = 4 if not tiny else 2
  c.model.vision.mlp = 256 if not tiny else 64
  c.model.vision.num_soft_tokens = 4
  c.model.vision.act = 'quick_gelu'     # CLIP's activation
  c.model.vision.init_from = ''          # a Hugging Face CLIP dir whose vision tower initialises this one
  c.model.vision.param_dtype = ''        # '' = model.param_dtype

  c.model.fusion = ml_collections.ConfigDict()
  c.model.fusion.kind = 'projector'      # 'projector' | 'qformer'
  c.model.fusion.qformer_layers = 1
  c.model.fusion.qformer_heads = 4

  c.model.llm = ml_collections.ConfigDict()
  c.model.llm.vocab_size = 0             # 0 = the tokenizer's size
  c.model.llm.width = 128 if not tiny else 32
  c.model.llm.layers = 2 if not tiny else 1
  c.model.llm.heads = 4 if not tiny else 2
  c.model.llm.kv_heads = 2 if not tiny else 1
  c.model.llm.head_dim = 0               # 0 = width // heads
  c.model.llm.mlp = 384 if not tiny else 64
  c.model.llm.rope_theta = 10000.0
  c.model.llm.rope_scaling = ml_collections.ConfigDict(dict(  # as HF rope_scaling; type 'none'|'linear'|'llama3'
      type='none', factor=1.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192))
  c.model.llm.norm_eps = 1e-5
  c.model.llm.qkv_bias = False
  c.model.llm.tie_embeddings = False
  c.model.llm.attention = 'xla'          # 'xla' (jax.nn.dot_product_attention) | 'einsum' | 'flash' (CPU) | 'cudnn' (GPU)
  c.model.llm.init_from = ''             # a Hugging Face LLaMA/Qwen2 dir (its architecture must match the above)
  c.model.llm.param_dtype = ''           # '' = model.param_dtype; 'bfloat16' keeps a frozen LLM at half the memory
                                         # (LoRA adapters stay in model.param_dtype)
  # (any init_from may also be a `mer-jax convert` output: restored with Orbax onto the mesh's shardings)

  # LoRA adapters on the LLM's projections (q k v o gate up down); rank 0 = off. With adapters on and
  # 'llm' left out of train.trainable, only the adapters of the LLM train (its base weights stay frozen).
  # Emotion-LLaMA: rank=64, targets=('q', 'v'); AffectGPT: rank=16 on all seven projections.
  c.model.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets=('q', 'v')))

  # Stage chaining: the newest checkpoint of another run starts this one, for the components both models
  # have (audio, vision, fusion, llm, valence_head); the others, and LoRA adapters it lacks, start fresh.
  # Applied after model.<part>.init_from. Optimizer state and step start anew.
  c.init = ml_collections.ConfigDict()
  c.init.run = ''                        # a run's workdir ('' = none)

  # Affective data augmentation, all off: noise/gain/speed/SpecAugment, blur/crop/flip/jitter/dropped frames,
  # word dropout/ASR errors, modality dropout, prompt variety (keys and meaning: mer_jax/data/augment_config.py).
  c.augment = augment_defaults()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300 if not tiny else 6
  c.train.batch_size = 32 if not tiny else 4
  c.train.microbatches = 1               # gradient accumulation: batch_size / microbatches per pass
  c.train.loss_chunk = 0                 # > 0: cross-entropy over this many positions at a time (0: all at once)
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50 if not tiny else 1
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.valence_loss_weight = 1.0
  c.train.trainable = ('audio', 'vision', 'fusion', 'llm', 'valence_head')  # the parameter groups that train
  c.train.log_every = 50 if not tiny else 1
  c.train.eval_every = 100 if not tiny else 3
  c.train.checkpoint_every = 100 if not tiny else 3
  c.train.keep_checkpoints = 3
  c.train.max_bad_steps = 10             # stop after this many steps in a row with a non-finite loss or gradient

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64 if not tiny else 4
  c.eval.max_new_tokens = 6 + 42 * explanations.to_int()  # 6; 48 with explanations

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                       # -1: all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.dcn_data = 1                    # degrees across slices / nodes (hybrid mesh when > 1)
  c.mesh.dcn_fsdp = 1
  c.mesh.dcn_tensor = 1
  c.sharding_rules = ()                  # () = the default table in mer_jax/train/sharding.py
  return c


def get_hyper(h: Hyper) -> list[Point]:
  """A learning-rate x fusion sweep: `mer-jax sweep --config configs/demo.py --workdir runs/sweep`."""
  return h.product([
      h.sweep('config.train.learning_rate', [1e-3, 3e-3]),
      h.sweep('config.model.fusion.kind', ['projector', 'qformer']),
  ])
