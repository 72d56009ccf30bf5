"""OLMo 2's reordered norm (OLMo Team 2024, "2 OLMo 2 Furious", arXiv 2501.00656; OLMo-core):
the LayerNorm moves from a sublayer's input to its output, inside the residual branch,

    h = x + LN_1(attn(x)),   out = h + LN_2(mlp(h))

instead of the pre-LayerNorm x + attn(LN_1(x)), h + mlp(LN_2(h)). The block keeps its two
LayerNorms (same parameters, same count); only where they sit changes. OLMo 2 adopted it
with qk-norm for training stability (fewer loss and gradient-norm spikes); it targets none
of the paper's failure modes directly, so `mitigates` is empty.
"""
from __future__ import annotations

from typing import Literal

from . import Intervention, Key, register


@register
class NormOrder(Intervention):
    name = "norm_order"
    keys = {"model.norm_order": Key(type=Literal["pre", "reordered"], default="pre")}
    mitigates = ()
    test = "tests/test_norm_order.py::test_reordered_block_adds_layernormed_sublayer_outputs"
    off = {"model.norm_order": "pre"}

    def block(self, c, blk, x, cos, sin, probe: bool | str):
        a, stats = blk.attn(x, cos, sin, probe)
        x = x + blk.ln1(a)
        return x + blk.ln2(blk.mlp(x)), stats
