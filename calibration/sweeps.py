"""Which shapes to time: a grid to fit on and, between its points, shapes held out to judge the fit.

Every variant's dimensions come in three kinds: token-like (tokens, tokens per
expert, batch, parameters), width-like (d_model, d_ff, head size) and fixed
(experts, top-k, heads). Accelerators run the grid scaled up (more tokens,
wider layers) so kernels reach the sizes a step really runs; the host CPU runs
it as written. Held-out shapes take each dimension *between* the fit grid's
values, so validation measures interpolation, not recall. Selection is seeded:
the same mode and seed give the same shapes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

TOKEN, WIDTH, FIXED = "token", "width", "fixed"


@dataclass(frozen=True)
class Dim:
    kind: str
    fit: tuple[int, ...]
    held_out: tuple[int, ...]


_EXPERT_FFN = {"e": Dim(FIXED, (1, 2, 4), (3,)),  # local experts
               "c": Dim(TOKEN, (32, 128, 512), (64, 256)),  # tokens per expert
               "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
               "f": Dim(WIDTH, (256, 512, 1024), (384, 768))}
# Capacity per expert is ~1.25 × t × k / e in training, so it grows with the group: a token-like dimension.
_ONE_HOT = {"t": Dim(TOKEN, (128, 512, 1024), (256, 768)),  # group size
            "e": Dim(FIXED, (8, 16, 32), (12, 24)),
            "c": Dim(TOKEN, (16, 64, 256), (32, 128)),
            "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
            "k": Dim(FIXED, (1, 2), (1, 2))}
_DENSE_FFN = {"t": Dim(TOKEN, (64, 256, 1024), (128, 512)),
              "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
              "f": Dim(WIDTH, (256, 1024, 2048), (512, 1536))}

# Sizes for one host-CPU device; `scale` multiplies token and width dimensions on accelerators.
GRIDS: dict[str, dict[str, Dim]] = {
    "matmul/dense": {"t": Dim(TOKEN, (64, 256, 1024), (128, 512)),
                     "d_in": Dim(WIDTH, (128, 512, 1024), (256, 768)),
                     "d_out": Dim(WIDTH, (128, 512, 1024), (256, 768))},
    "ffn/gelu": _DENSE_FFN,
    "ffn/swiglu": _DENSE_FFN,
    "attention/core": {"b": Dim(TOKEN, (1, 2, 4), (3,)),
                       "s": Dim(WIDTH, (64, 128, 256), (96, 192)),
                       "h": Dim(FIXED, (4, 8), (6,)),
                       "hd": Dim(FIXED, (32, 64), (48,))},
    "expert_ffn/gelu": _EXPERT_FFN,
    "expert_ffn/swiglu": _EXPERT_FFN,
    "router/topk": {"t": Dim(TOKEN, (256, 1024, 4096), (512, 2048)),
                    "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
                    "e": Dim(FIXED, (8, 32, 128), (16, 64)),
                    "k": Dim(FIXED, (1, 2), (1, 2))},
    "permute/gather_dispatch": {"t": Dim(TOKEN, (256, 1024, 4096), (512, 2048)),
                                "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
                                "e": Dim(FIXED, (8, 64), (32,)),
                                "k": Dim(FIXED, (1, 2), (1, 2))},
    "unpermute/gather_combine": {"t": Dim(TOKEN, (256, 1024, 4096), (512, 2048)),
                               "d": Dim(WIDTH, (128, 256, 512), (192, 384)),
                               "k": Dim(FIXED, (1, 2), (1, 2))},
    "dispatch_einsum/dispatch": _ONE_HOT,
    "dispatch_einsum/combine": _ONE_HOT,
    "elementwise/residual_norm": {"t": Dim(TOKEN, (256, 1024, 4096), (512, 2048)),
                                  "d": Dim(WIDTH, (128, 256, 512, 1024), (192, 384, 768))},
    "copy/scale": {"t": Dim(TOKEN, (256, 1024, 4096), (512, 2048)),
                         "d": Dim(WIDTH, (128, 256, 512, 1024), (192, 384, 768))},
    "optimizer/adam": {"p": Dim(TOKEN, (1 << 14, 1 << 16, 1 << 18, 1 << 20), (3 << 14, 3 << 16, 3 << 18))},
}


@dataclass(frozen=True)
class Mode:
    fit_shapes: int  # per variant and dtype
    held_out_shapes: int
    dtypes: tuple[str, ...]


MODES = {"quick": Mode(fit_shapes=6, held_out_shapes=3, dtypes=("bf16",)),
         "full": Mode(fit_shapes=14, held_out_shapes=7, dtypes=("bf16", "f32"))}

# (token scale, width scale) by JAX platform: the host runs the grid as written.
SCALES = {"cpu": (1, 1), "gpu": (16, 4), "tpu": (16, 4)}


def _scaled(value: int, kind: str, scale: tuple[int, int]) -> int:
    return value * (scale[0] if kind == TOKEN else scale[1] if kind == WIDTH else 1)


def _pick(grid: list[tuple[int, ...]], count: int, rng: np.random.Generator, keep_corners: bool) -> list[tuple[int, ...]]:
    """`count` shapes from a grid; the smallest and largest first when asked, so the fit spans the range."""
    if len(grid) <= count:
        return grid
    chosen = [0, len(grid) - 1] if keep_corners else []
    rest = [i for i in range(len(grid)) if i not in chosen]
    chosen += sorted(rng.choice(rest, size=count - len(chosen), replace=False).tolist())
    return [grid[i] for i in chosen]


def shapes(variant: str, mode: str, platform: str, seed: int = 0) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """(fit shapes, held-out shapes) of one variant."""
    dims = GRIDS[variant]
    scale = SCALES.get(platform, SCALES["gpu"])
    m = MODES[mode]
    rng = np.random.default_rng([seed, sum(map(ord, variant))])
    names = list(dims)
    fit_grid = list(itertools.product(*(dims[n].fit for n in names)))
    held_grid = list(itertools.product(*(dims[n].held_out for n in names)))
    out = []
    for grid, count, corners in ((fit_grid, m.fit_shapes, True), (held_grid, m.held_out_shapes, False)):
        out.append([{n: _scaled(v, dims[n].kind, scale) for n, v in zip(names, values)}
                    for values in _pick(grid, count, rng, corners)])
    return out[0], out[1]
