"""Benchmark shapes: the Linear layers of real models, and synthetic ones.

A transformer block has four GEMMs per token (fused as inference engines run them):

=========  =================================================  =====================
layer      N (output features)                                K (input features)
=========  =================================================  =====================
qkv_proj   (num_heads + 2 * num_kv_heads) * head_dim          hidden_size
o_proj     hidden_size                                        num_heads * head_dim
gate_up    2 * intermediate_size                              hidden_size
down_proj  hidden_size                                        intermediate_size
=========  =================================================  =====================

For a mixture-of-experts model the MLP layers are per expert: each token is routed
to ``top_k`` of ``num_experts`` experts, so (uniform routing assumed) a step with
``M`` tokens runs ``min(E, M * top_k)`` experts on ``ceil(M * top_k / active)``
tokens each. Presets hold the published ``config.json`` values; any other model is
read from its ``config.json`` with :func:`model_from_config`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class LinearShape:
    """One GEMM: activations [M, K] @ weight[N, K].T; ``model``/``layer`` are None when synthetic."""

    N: int
    K: int
    model: Optional[str] = None
    layer: Optional[str] = None

    @property
    def label(self) -> str:
        name = f"{self.model}/{self.layer}" if self.model else "synthetic"
        return f"{name} N={self.N} K={self.K}"


@dataclass(frozen=True)
class ModelSpec:
    """The numbers that fix a decoder's Linear shapes (names as in HF ``config.json``)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: Optional[int] = None
    num_experts: int = 0  # 0: dense MLP
    num_experts_per_tok: int = 0
    moe_intermediate_size: Optional[int] = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def linears(self) -> List[LinearShape]:
        """The four Linear shapes of one block, in execution order."""
        h, hd = self.hidden_size, self.hd
        inter = self.moe_intermediate_size if self.is_moe and self.moe_intermediate_size else self.intermediate_size
        mk = lambda layer, n, k: LinearShape(N=n, K=k, model=self.name, layer=layer)
        return [
            mk("qkv_proj", (self.num_attention_heads + 2 * self.num_key_value_heads) * hd, h),
            mk("o_proj", h, self.num_attention_heads * hd),
            mk("gate_up_proj", 2 * inter, h),
            mk("down_proj", h, inter),
        ]

    def is_expert_layer(self, layer: str) -> bool:
        return self.is_moe and layer in ("gate_up_proj", "down_proj")

    def gemm_calls(self, tokens: int) -> List[Tuple[LinearShape, int, int]]:
        """``(shape, M, count)`` for one block processing ``tokens`` tokens."""
        calls = []
        for s in self.linears():
            if self.is_expert_layer(s.layer):
                routed = tokens * self.num_experts_per_tok
                active = min(self.num_experts, routed)
                calls.append((s, math.ceil(routed / active), active))
            else:
                calls.append((s, tokens, 1))
        return calls


PRESETS: Dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama-3.1-8b", 4096, 14336, 32, 8, 32, head_dim=128),
        ModelSpec("llama-3.1-70b", 8192, 28672, 64, 8, 80, head_dim=128),
        ModelSpec("qwen3-8b", 4096, 12288, 32, 8, 36, head_dim=128),
        ModelSpec("mixtral-8x7b", 4096, 14336, 32, 8, 32, head_dim=128, num_experts=8, num_experts_per_tok=2),
        # Qwen/Qwen3-30B-A3B config.json (also its block-FP8 release Qwen3-30B-A3B-FP8): hidden_size 2048,
        # intermediate_size 6144 (unused: every layer is MoE), moe_intermediate_size 768,
        # num_attention_heads 32, num_key_value_heads 4, head_dim 128, num_hidden_layers 48,
        # num_experts 128, num_experts_per_tok 8.
        ModelSpec("qwen3-30b-a3b", 2048, 6144, 32, 4, 48, head_dim=128, num_experts=128, num_experts_per_tok=8,
                  moe_intermediate_size=768),
    )
}

DEEPSEEK_V3_SHAPES: Tuple[LinearShape, ...] = tuple(
    LinearShape(N=n, K=k, model="deepseek-v3", layer=layer) for layer, n, k in (
        # DeepSeek-V3/R1 config.json: hidden_size 7168, num_attention_heads 128, q_lora_rank 1536,
        # kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128,
        # moe_intermediate_size 2048. The GEMMs of one layer (DeepGEMM's benchmark shapes):
        ("q_a+kv_a_proj", 2112, 7168),    # q_lora_rank + kv_lora_rank + qk_rope_head_dim, fused
        ("q_b_proj", 24576, 1536),        # heads * (qk_nope_head_dim + qk_rope_head_dim)
        ("kv_b_proj", 32768, 512),        # heads * (qk_nope_head_dim + v_head_dim)
        ("o_proj", 7168, 16384),          # heads * v_head_dim -> hidden
        ("expert_gate_up", 4096, 7168),   # 2 * moe_intermediate_size (routed and shared experts)
        ("expert_down", 7168, 2048),
    )
)
"""DeepSeek-V3's Linear shapes, as a list and not a :class:`ModelSpec`: its attention is MLA
(low-rank q and kv projections, a kv_b_proj that decode absorbs into attention, a 2112-wide
fused q_a/kv_a projection), which the four-fused-linears model above does not describe, so no
model-level estimate is made for it. The FP8-block family benchmarks these shapes in every run."""

SYNTHETIC = LinearShape(N=8192, K=8192)
"""The 8192^3 square GEMM (with M = 8192) every family also reports."""

DEFAULT_MS: Tuple[int, ...] = (1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_MS: Tuple[int, ...] = (1, 16, 128, 1024, 4096)


def model_from_config(path: Union[str, Path], name: Optional[str] = None) -> ModelSpec:
    """A :class:`ModelSpec` from a HF ``config.json`` (or the folder holding it).

    Reads ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads`` (default: ``num_attention_heads``), ``head_dim`` (default:
    ``hidden_size // num_attention_heads``), ``num_hidden_layers`` and, for MoE models,
    ``num_local_experts``/``num_experts``, ``num_experts_per_tok`` and
    ``moe_intermediate_size``. A multimodal config's ``text_config`` is used if present.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"model config {str(p)!r} does not exist: give a HF config.json or its folder.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {str(p)!r} is not valid JSON ({e}).") from None
    cfg = cfg.get("text_config") or cfg
    required = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise ValueError(f"model config {str(p)!r} lacks {', '.join(missing)}: a decoder config.json needs "
                         f"{', '.join(required)} (num_key_value_heads and head_dim are optional).")
    heads = int(cfg["num_attention_heads"])
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    default_name = cfg.get("_name_or_path") or p.parent.name or "model"
    return ModelSpec(
        name=(name or Path(str(default_name)).name).lower(),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
        num_experts=experts,
        num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
        moe_intermediate_size=int(cfg["moe_intermediate_size"]) if experts and cfg.get("moe_intermediate_size") else None,
    )


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset by name (case-insensitive) or a ``config.json`` path."""
    key = name_or_path.lower()
    if key in PRESETS:
        return PRESETS[key]
    p = Path(name_or_path)
    if p.exists():
        return model_from_config(p)
    raise ValueError(f"unknown model {name_or_path!r}: give one of {', '.join(PRESETS)} "
                     "or the path of a HF config.json.")


def unique_shapes(models: Sequence[ModelSpec], synthetic: bool) -> List[LinearShape]:
    """Every model's Linear shapes (first occurrence of an (N, K) wins) plus the synthetic one."""
    seen, out = set(), []
    for s in [sh for m in models for sh in m.linears()] + ([SYNTHETIC] if synthetic else []):
        if (s.N, s.K) not in seen:
            seen.add((s.N, s.K))
            out.append(s)
    return out
