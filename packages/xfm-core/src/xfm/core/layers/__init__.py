"""Reusable transformer building blocks shared by every xfm encoder (all on ``xfm.core.attention``)."""

from xfm.core.dropout import Dropout, dropout, dropout_mask
from xfm.core.layers.bert_layer import PostLNLayer
from xfm.core.layers.cpu_gemm import Linear, cpu_gemm_backend, linear
from xfm.core.layers.drop_path import DropPath, drop_path
from xfm.core.layers.heads import MLMHead, MLPHead
from xfm.core.layers.mha import MultiHeadAttention
from xfm.core.layers.mlp import Mlp, get_activation
from xfm.core.layers.positions import take_positions
from xfm.core.layers.residual import residual_add
from xfm.core.layers.vit_block import FusedQKVAttention, PreLNBlock
from xfm.core.layers.vocab_loss import vocab_cross_entropy

__all__ = [
    "DropPath",
    "Dropout",
    "FusedQKVAttention",
    "Linear",
    "MLMHead",
    "MLPHead",
    "Mlp",
    "MultiHeadAttention",
    "PostLNLayer",
    "PreLNBlock",
    "cpu_gemm_backend",
    "drop_path",
    "dropout",
    "dropout_mask",
    "get_activation",
    "linear",
    "residual_add",
    "take_positions",
    "vocab_cross_entropy",
]
