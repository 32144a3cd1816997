"""The multimodal emotion model: encoders -> fusion -> soft tokens spliced into the LLM -> LM and valence heads."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from mer_jax.models import layers
from mer_jax.models.audio import AudioEncoder
from mer_jax.models.fusion import Projector, QFormer
from mer_jax.models.llm import LLM
from mer_jax.models.vision import VisionEncoder

FUSION_KINDS = ('projector', 'qformer')


def splice(embeddings: jax.Array, soft_tokens: jax.Array, positions: jax.Array) -> jax.Array:
  """Overwrites embeddings [B, L, D] at int positions [B, S] with soft_tokens [B, S, D] (scatter)."""
  rows = jnp.arange(embeddings.shape[0])[:, None]
  return embeddings.at[rows, positions].set(soft_tokens.astype(embeddings.dtype))


class ValenceHead(nnx.Module):
  """Small MLP from an LLM hidden state [B, D] to a scalar valence [B]."""

  def __init__(self, width: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.Dense(width, width, ('embed', 'mlp'), **common)
    self.fc2 = layers.Dense(width, (), ('mlp',), **common)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [B, D] -> float32 [B]."""
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False)).astype(jnp.float32)


class MERModel(nnx.Module):
  """Encoders for the enabled modalities, fusion, the LLM and a valence head; `cfg` is config.model."""

  def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int, *,
               spec_augment: tuple[int, int, int, int] | None = None, rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype)
    stack = dict(dropout=cfg.dropout, remat=cfg.remat, **common)

    def part(name: str) -> dict:
      """`stack` with the part's own parameter dtype (config.model.<name>.param_dtype), if it sets one."""
      return {**stack, 'param_dtype': jnp.dtype(cfg[name].get('param_dtype') or param_dtype)}

    self.audio = (AudioEncoder(cfg.audio, **part('audio'), spec_augment=spec_augment, rngs=rngs)
                  if 'audio' in cfg.modalities else None)
    self.vision = VisionEncoder(cfg.vision, **part('vision'), rngs=rngs) if 'video' in cfg.modalities else None
    widths, num_soft = {}, 0
    if self.audio is not None:
      widths['audio'], num_soft = cfg.audio.width, num_soft + cfg.audio.num_soft_tokens
    if self.vision is not None:
      widths['video'], num_soft = cfg.vision.width, num_soft + cfg.vision.num_soft_tokens
    if cfg.fusion.kind not in FUSION_KINDS:
      raise ValueError(f'unknown fusion kind {cfg.fusion.kind!r}; choose from {FUSION_KINDS}')
    self.fusion_kind = cfg.fusion.kind
    if not widths:
      self.fusion = None
    elif cfg.fusion.kind == 'projector':
      self.fusion = Projector(widths, cfg.llm.width, **common, rngs=rngs)
    else:
      self.fusion = QFormer(widths, num_soft, cfg.llm.width, cfg.llm.width,
                            num_heads=cfg.fusion.qformer_heads, num_layers=cfg.fusion.qformer_layers,
                            **stack, rngs=rngs)
    self.num_soft_tokens = num_soft
    self.num_audio_slots = cfg.audio.num_soft_tokens
    self.num_video_slots = cfg.vision.num_soft_tokens
    self.llm = LLM(cfg.llm, vocab_size, **part('llm'), lora_config=cfg.lora, lora_param_dtype=param_dtype,
                   rngs=rngs)
    self.valence_head = ValenceHead(cfg.llm.width, **common, rngs=rngs)

  def encode_soft_tokens(self, batch: dict, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Encodes the batch's audio/frames into LLM-width soft tokens [B, S, width] (audio span first).

    A modality whose batch['<modality>_present'] is False for an example enters fusion as zeros.
    """
    features = {}
    if self.audio is not None:
      features['audio'] = self.audio(batch['audio'], rngs=rngs)
    if self.vision is not None:
      features['video'] = self.vision(batch['frames'], rngs=rngs)
    for modality, x in features.items():
      if f'{modality}_present' in batch:
        features[modality] = jnp.where(batch[f'{modality}_present'][:, None, None], x, jnp.zeros_like(x))
    if self.fusion_kind == 'projector':
      pools = {'audio': self.audio, 'video': self.vision}
      features = {m: pools[m].pool(x) for m, x in features.items()}
    return self.fusion(features, rngs=rngs)

  def soft_token_presence(self, batch: dict) -> jax.Array | None:
    """Bool [B, S]: whether each soft-token slot's modality is present; None when the batch says nothing."""
    spans = [(m, n) for m, n, enc in (('audio', self.num_audio_slots, self.audio), ('video', self.num_video_slots,
                                                                                   self.vision)) if enc is not None]
    if not any(f'{m}_present' in batch for m, _ in spans):
      return None
    size = batch['tokens'].shape[0]
    return jnp.concatenate([jnp.broadcast_to(batch.get(f'{m}_present', jnp.ones([size], bool))[:, None], (size, n))
                            for m, n in spans], axis=1)

  def embed_inputs(self, batch: dict, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Token embeddings [B, L, width] with the soft tokens spliced in at batch['soft_positions']."""
    embeddings = self.llm.embed_tokens(batch['tokens'])
    if self.fusion is not None:
      positions = batch['soft_positions']
      if positions.shape[1] != self.num_soft_tokens:
        raise ValueError(f'soft_positions has {positions.shape[1]} slots, the model makes '
                         f'{self.num_soft_tokens} soft tokens')
      soft = self.encode_soft_tokens(batch, rngs=rngs)
      present = self.soft_token_presence(batch)
      if present is not None:  # a missing modality's slots keep their token embeddings ('missing')
        rows = jnp.arange(embeddings.shape[0])[:, None]
        soft = jnp.where(present[:, :, None], soft.astype(embeddings.dtype), embeddings[rows, positions])
      embeddings = splice(embeddings, soft, positions)
    return layers.constrain(embeddings, layers.HIDDEN)

  def __call__(self, batch: dict, *, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (logits float32 [B, L, vocab], valence float32 [B]); dropout is active iff rngs is given."""
    hidden, valence = self.hidden_states(batch, rngs=rngs)
    return self.llm.logits(hidden), valence

  def hidden_states(self, batch: dict, *, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (the LLM's final-normed hidden [B, L, width], valence float32 [B]), without the LM head."""
    hidden = self.llm.hidden(self.embed_inputs(batch, rngs=rngs), rngs=rngs)
    last_prompt = (batch['answer_start'] - 1)[:, None, None]
    pooled = jnp.take_along_axis(hidden, last_prompt, axis=1)[:, 0]
    return hidden, self.valence_head(pooled)

  def prefill(self, batch: dict, max_len: int) -> tuple[jax.Array, jax.Array, layers.KVCache]:
    """Runs every prompt (soft tokens spliced in) through the LLM in one pass into a fresh KV cache.

    Prompts are right-padded: example b's prompt ends before batch['answer_start'][b]; what follows
    is never read. Returns (logits float32 [B, vocab] for the first answer token, valence float32 [B],
    a cache of `max_len` positions whose lengths are answer_start).
    """
    embeddings = self.embed_inputs(batch)
    hidden, cache = self.llm.extend(embeddings, self.llm.init_cache(embeddings.shape[0], max_len))
    start = batch['answer_start'].astype(jnp.int32)
    last = hidden[jnp.arange(hidden.shape[0]), start - 1]
    return self.llm.logits(last[:, None])[:, 0], self.valence_head(last), cache._replace(lengths=start)
