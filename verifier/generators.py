"""Built-in dataset generators: a job can name one and a seed instead of uploading data.

Every node regenerates the data itself, so the arrays must be the same bits on every
machine. Two rules make that so. All randomness comes from numpy's PCG64 through `random`,
`integers` and `permutation`, which are pure integer and exact float work. And all other
arithmetic is + - * / and rounding, which IEEE 754 fixes exactly: no np.sin, np.exp or
rng.normal, whose results may differ in the last bit between CPUs (numpy picks SIMD
implementations at run time). Sines and Gaussian-like noise are built from those parts.
Each generator returns (x, y) numpy arrays; `verifier.data` wraps them in a Dataset.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from consensus import runnable
from consensus.args import Arg
from consensus.registry import GENERATOR_SCHEMAS as S

MAX_VALUES = runnable.MAX_VALUES  # elements of x, so a tiny job spec cannot ask for gigabytes


def pcg64(seed: int) -> np.random.Generator:
    """The only source of randomness for data: PCG64, whose stream is the same on every platform."""
    return np.random.Generator(np.random.PCG64(seed))


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Bell-shaped noise with mean 0 and standard deviation 1: the sum of 4 uniforms, rescaled."""
    total = rng.random((4, *shape)).sum(axis=0)  # mean 2, variance 4/12
    return (total - 2.0) * math.sqrt(3.0)


def _balanced_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % classes)


def _sin_cos(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos by a Taylor series after reduction to [-pi, pi]: exact IEEE steps only."""
    r = theta - (2 * math.pi) * np.round(theta / (2 * math.pi))
    r2 = r * r
    # Horner form from the degree-25/24 terms down; the first term left out is below 1e-11.
    sin = np.full_like(r, 1.0 / math.factorial(25))
    cos = np.full_like(r, 1.0 / math.factorial(24))
    for n in range(11, -1, -1):
        sin = sin * r2 + (-1) ** n / math.factorial(2 * n + 1)
        cos = cos * r2 + (-1) ** n / math.factorial(2 * n)
    return sin * r, cos


# -- the generators --------------------------------------------------------------------------


def blobs(a: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-like class clusters around centres drawn in the cube [-3, 3]^dim."""
    centres = (rng.random((a["classes"], a["dim"])) * 2.0 - 1.0) * 3.0
    y = _balanced_labels(rng, a["n"], a["classes"])
    x = centres[y] + _noise(rng, (a["n"], a["dim"]))
    return x.astype(np.float32), y


def spirals(a: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved 2-D spiral arms, one per class, each making 1.5 turns."""
    y = _balanced_labels(rng, a["n"], a["classes"])
    t = rng.random(a["n"]) * 0.95 + 0.05
    sin, cos = _sin_cos(3.0 * math.pi * t + (2.0 * math.pi / a["classes"]) * y)
    x = np.stack([t * cos, t * sin], axis=1) + 0.02 * _noise(rng, (a["n"], 2))
    return (3.0 * x).astype(np.float32), y


# Seven-segment strokes: A top, B top right, C bottom right, D bottom, E bottom left,
# F top left, G middle. Ten digit-like classes, all distinct.
SEGMENTS = ("ABCDEF", "BC", "ABGED", "ABGCD", "FGBC", "AFGCD", "AFGEDC", "ABC", "ABCDEFG", "ABCDFG")


def _glyph(segments: str, side: int) -> np.ndarray:
    img = np.zeros((side, side))
    left, right, top, mid, bottom = side // 4, side - 1 - side // 4, 1, side // 2, side - 2
    strokes = {"A": (top, top, left, right), "D": (bottom, bottom, left, right), "G": (mid, mid, left, right),
               "F": (top, mid, left, left), "B": (top, mid, right, right),
               "E": (mid, bottom, left, left), "C": (mid, bottom, right, right)}
    for s in segments:
        r0, r1, c0, c1 = strokes[s]
        img[r0:r1 + 1, c0:c1 + 1] = 1.0
    return img


def digits(a: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """1-channel side x side seven-segment digits, shifted by up to a pixel, dimmed, noisy."""
    side, n = a["side"], a["n"]
    glyphs = np.stack([_glyph(SEGMENTS[c], side) for c in range(a["classes"])])
    y = _balanced_labels(rng, n, a["classes"])
    shifts = rng.integers(-1, 2, (n, 2))
    x = np.empty((n, side, side))
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            pick = (shifts[:, 0] == dr) & (shifts[:, 1] == dc)
            x[pick] = np.roll(glyphs[y[pick]], (dr, dc), axis=(1, 2))
    x = x * (0.6 + 0.4 * rng.random((n, 1, 1))) + 0.25 * _noise(rng, (n, side, side))
    return x.reshape(n, 1, side, side).astype(np.float32), y


# A small grammar of short sentences: enough structure that a tiny model visibly learns it.
ALPHABET = runnable.TEXT_ALPHABET  # the chain knows the token range from it
WORDS = (
    ("the cat", "a dog", "the old man", "my sister", "the bird", "a small child", "the farmer", "our teacher"),
    ("sees", "likes", "finds", "follows", "paints", "feeds", "calls", "hears"),
    ("the red ball", "a green apple", "the river", "a tall tree", "the moon", "a quiet house", "the garden",
     "a new song"),
    (".", " today.", " again.", " at night.", " in the rain."),
)
TEXT_CHARS = 200_000  # the stream that windows are cut from


def grammar_text(rng: np.random.Generator, chars: int) -> str:
    """Sentences drawn from WORDS until the text is at least `chars` long."""
    per_sentence = 30  # a little under the shortest average, so one draw is enough
    picks = rng.integers(0, 1 << 30, (chars // per_sentence + 1, len(WORDS)))
    parts = []
    for row in picks:
        s, v, o, e = (WORDS[i][int(row[i]) % len(WORDS[i])] for i in range(len(WORDS)))
        parts.append(f"{s} {v} {o}{e} ")
    return "".join(parts)[:chars]


def text(a: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Windows of grammar text as token ids (ALPHABET positions); y is x shifted by one."""
    n, context = a["n"], a["context"]
    table = np.zeros(256, dtype=np.int64)
    table[np.frombuffer(ALPHABET.encode(), dtype=np.uint8)] = np.arange(len(ALPHABET))
    stream = table[np.frombuffer(grammar_text(rng, TEXT_CHARS).encode(), dtype=np.uint8)]
    starts = rng.integers(0, len(stream) - context, n)
    windows = stream[starts[:, None] + np.arange(context + 1)]
    return windows[:, :-1].copy(), windows[:, 1:].copy()


def byte_text(a: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Windows of grammar text as its UTF-8 bytes (the gpt model's tokens); y is x shifted by one."""
    n, context = a["n"], a["context"]
    stream = np.frombuffer(grammar_text(rng, max(TEXT_CHARS, 4 * context)).encode(), dtype=np.uint8).astype(np.int64)
    starts = rng.integers(0, len(stream) - context, n)
    windows = stream[starts[:, None] + np.arange(context + 1)]
    return windows[:, :-1].copy(), windows[:, 1:].copy()


# -- the registry ----------------------------------------------------------------------------

# Item shapes, value ranges and the size cap are consensus.runnable's (GENERATOR_ITEMS), which
# the chain checks every job against without numpy: a generator must make exactly those.
GENERATORS: dict[str, tuple[dict[str, Arg], Callable]] = {
    # name: (argument schema, generator)
    "blobs": (S["blobs"], blobs),
    "spirals": (S["spirals"], spirals),
    "digits": (S["digits"], digits),
    "text": (S["text"], text),
    "byte_text": (S["byte_text"], byte_text),
}
