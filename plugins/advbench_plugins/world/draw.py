"""Tiny numpy rasteriser for the procedural world: shapes on a supersampled canvas, then box-filtered.

Coordinates are in the unit square (x right, y down). A :class:`Canvas` renders at ``size * ss`` pixels and
:meth:`Canvas.image` averages ``ss × ss`` blocks, which anti-aliases the edges of every shape.
"""

from __future__ import annotations

import numpy as np


class Canvas:
    """A float RGB canvas in [0, 1] with shape painters that take unit-square coordinates."""

    def __init__(self, size: int = 32, ss: int = 2, colour=(0.0, 0.0, 0.0)):
        self.size, self.ss = size, ss
        n = size * ss
        self.rgb = np.empty((n, n, 3), np.float32)
        self.rgb[:] = np.asarray(colour, np.float32)
        grid = (np.arange(n, dtype=np.float32) + 0.5) / n
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")

    def paint(self, mask: np.ndarray, colour, alpha: float = 1.0) -> None:
        """Blend ``colour`` (RGB, or an H×W×3 array) into the canvas where ``mask`` is true."""
        m = mask.astype(np.float32)[..., None] * alpha
        self.rgb[:] = self.rgb * (1 - m) + np.asarray(colour, np.float32) * m

    # ------------------------------------------------------------------------------------ shapes
    def ellipse(self, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
        dx, dy = self.x - cx, self.y - cy
        c, s = np.cos(angle), np.sin(angle)
        u, v = (c * dx + s * dy) / max(rx, 1e-4), (-s * dx + c * dy) / max(ry, 1e-4)
        return u * u + v * v <= 1.0

    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        return (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)

    def polygon(self, points) -> np.ndarray:
        """Convex polygon (points in either winding order)."""
        pts = np.asarray(points, np.float32)
        inside_pos = np.ones_like(self.x, bool)
        inside_neg = np.ones_like(self.x, bool)
        for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
            cross = (x1 - x0) * (self.y - y0) - (y1 - y0) * (self.x - x0)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        return inside_pos | inside_neg

    def segment(self, x0, y0, x1, y1, width) -> np.ndarray:
        px, py = self.x - x0, self.y - y0
        dx, dy = x1 - x0, y1 - y0
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-8), 0, 1)
        return (px - t * dx) ** 2 + (py - t * dy) ** 2 <= (width / 2) ** 2

    def ring(self, cx, cy, r, width) -> np.ndarray:
        d = np.sqrt((self.x - cx) ** 2 + (self.y - cy) ** 2)
        return np.abs(d - r) <= width / 2

    def star(self, cx, cy, r, points: int = 5) -> np.ndarray:
        ang = np.arctan2(self.y - cy, self.x - cx)
        d = np.sqrt((self.x - cx) ** 2 + (self.y - cy) ** 2)
        radius = r * (0.55 + 0.45 * np.cos(points * ang))
        return d <= radius

    # ---------------------------------------------------------------------------------- textures
    def stripes(self, period, angle, duty: float = 0.5, phase: float = 0.0) -> np.ndarray:
        coord = self.x * np.cos(angle) + self.y * np.sin(angle)
        return ((coord / period + phase) % 1.0) < duty

    def dots(self, period, radius, phase=(0.0, 0.0)) -> np.ndarray:
        u = (self.x / period + phase[0]) % 1.0 - 0.5
        v = (self.y / period + phase[1]) % 1.0 - 0.5
        return u * u + v * v <= (radius / period) ** 2

    def image(self, rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
        """Box-filter to ``size``×``size``, add Gaussian pixel noise, return uint8 H×W×3."""
        n, ss = self.size, self.ss
        img = self.rgb.reshape(n, ss, n, ss, 3).mean(axis=(1, 3))
        if rng is not None and noise > 0:
            img = img + rng.normal(0, noise, img.shape).astype(np.float32)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (h in [0, 1)) → RGB in [0, 1]."""
    h = (h % 1.0) * 6
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def lighting(canvas: Canvas, rng: np.random.Generator, strength: float = 0.15) -> None:
    """Global brightness and a soft directional light gradient (per-image variation)."""
    gain = rng.uniform(1 - strength, 1 + strength)
    angle = rng.uniform(0, 2 * np.pi)
    grad = (canvas.x - 0.5) * np.cos(angle) + (canvas.y - 0.5) * np.sin(angle)
    canvas.rgb[:] = np.clip(canvas.rgb * (gain + strength * grad[..., None]), 0, 1)


def pick_distinct(rng: np.random.Generator, sample, distance, n: int, min_distance: float,
                  avoid=(), max_tries: int = 100000) -> list:
    """Draw ``n`` items with ``sample(rng)`` whose pairwise ``distance`` is ≥ ``min_distance``.

    Items closer than ``min_distance`` to any of ``avoid`` are rejected too.
    """
    chosen: list = []
    for _ in range(max_tries):
        if len(chosen) == n:
            return chosen
        item = sample(rng)
        if all(distance(item, c) >= min_distance for c in [*chosen, *avoid]):
            chosen.append(item)
    raise RuntimeError(f"could only draw {len(chosen)} of {n} items at distance >= {min_distance}")
