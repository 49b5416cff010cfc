"""Small random models of the architectures this pack is run on, built offline.

Each is a transformers config class at a tiny size with random weights and the embedded
SmolLM2 tokenizer (49,152 tokens), saved as an ordinary Hugging Face folder that lm-eval loads
with ``pretrained=<folder>``, as it would a hub model. The weights are drawn with a large
initialiser range, so that the next-token distributions are far from uniform and a scoring
error (a wrong position, a dropped cache row) moves log-likelihoods by much more than the
tests' tolerance.

The two reasoning templates follow the models they are named after:

- ``R1_TEMPLATE``: DeepSeek-R1-Distill's, reduced to system, user and assistant turns. The
  system text follows the BOS token, turns are ``<｜User｜>...`` and
  ``<｜Assistant｜>...<｜end▁of▁sentence｜>`` (an earlier answer loses its reasoning), and the
  generation prompt opens a thinking block: ``<｜Assistant｜><think>\\n``.
- ``QWEN3_TEMPLATE``: Qwen3's, reduced likewise: ChatML turns, and the generation prompt
  ``<|im_start|>assistant\\n`` followed by an empty thinking block only when
  ``enable_thinking`` is false; by default the model opens the block itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

R1_TEMPLATE = (
    "{% set ns = namespace(system_prompt='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)

_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
# The architecture each family's real models use, at a tiny size.
CONFIGS = {
    # Pythia and deep-ignorance: parallel residual, rotary on a quarter of each head.
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        **_SMALL, intermediate_size=256, use_parallel_residual=True
    ),
    # Llama 3: grouped-query attention, untied embeddings.
    "llama": lambda: transformers.LlamaConfig(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False
    ),
    # DeepSeek-R1-Distill-Qwen: Qwen2 (biased q/k/v projections).
    "qwen2": lambda: transformers.Qwen2Config(
        **_SMALL, num_key_value_heads=2, intermediate_size=128
    ),
    # Qwen3: q/k norms.
    "qwen3": lambda: transformers.Qwen3Config(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, head_dim=16
    ),
    # The rest of hf-prefix's allow-list (propensity_evals/shared_scoring.py).
    "mistral": lambda: transformers.MistralConfig(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, sliding_window=None
    ),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4),
    # OPT: learned positions (offset by 2), a projection between embedding and model width.
    "opt": lambda: transformers.OPTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        word_embed_proj_dim=32,
    ),
    "gemma": lambda: transformers.GemmaConfig(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, head_dim=16
    ),
    # Gemma 2 and 3: local (sliding-window) layers between global ones, logit soft-capping.
    "gemma2": lambda: transformers.Gemma2Config(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, head_dim=16
    ),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **_SMALL, num_key_value_heads=2, intermediate_size=128, head_dim=16
    ),
    # Phi-2: partial rotary, parallel attention and MLP.
    "phi": lambda: transformers.PhiConfig(**_SMALL, intermediate_size=128),
    "phi3": lambda: transformers.Phi3Config(**_SMALL, num_key_value_heads=2, intermediate_size=128),
}
# Families hf-prefix must not share prefixes for: their layers are not attention over a
# masked prefix alone, so a shared row or a padded cache pass gives other numbers.
UNVERIFIED_CONFIGS = {
    # GPT-Neo: every other layer attends within a local window of its own mask.
    "gpt_neo": lambda: transformers.GPTNeoConfig(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        window_size=256,
        attention_types=[[["global", "local"], 1]],
    ),
    # LFM2: short convolutions over the row between attention layers.
    "lfm2": lambda: transformers.Lfm2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        layer_types=["conv", "full_attention"],
    ),
    # Falcon with ALiBi: distance biases instead of rotary positions.
    "falcon_alibi": lambda: transformers.FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True
    ),
}
INIT_RANGE = 0.5


def save_tiny_model(
    family: str, folder: Path, tokenizer_dir: Path, chat_template: str | None = None
) -> Path:
    """A random ``family`` model with SmolLM2's tokenizer (and ``chat_template``, if given)
    saved into ``folder``."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = (CONFIGS | UNVERIFIED_CONFIGS)[family]()
    config.vocab_size = len(tokenizer)
    config.initializer_range = INIT_RANGE
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
