"""Synthetic RGB-D anomaly generator writing the MVTec 3D-AD layout.

A procedural object (a height field over a tilted, noisy support plane) is ray-cast through a
pinhole camera looking down at it: organized xyz in the camera optical frame plus a Lambert-shaded
RGB image with texture, colour and lighting variation. Defects are defined in the object's own
coordinates, so their ground truth masks are exact: geometric (dent, bump, hole, cut), colour
(stain, scratch) and both (combined). Everything is drawn from one seed.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dbmr_ros.command import run_command
from dbmr_ros.data.io import write_gray, write_rgb, write_xyz
from dbmr_ros.data.sample import Sample
from dbmr_ros.files import refuse_existing_output

CATEGORIES = ('puck', 'dome', 'box')
DEFECTS = ('dent', 'bump', 'hole', 'cut', 'stain', 'scratch', 'combined')
CAMERA_HEIGHT = 0.30  # m above the support plane
BASE_COLOURS = {'puck': (150, 155, 165), 'dome': (200, 140, 60), 'box': (70, 120, 170)}


@dataclass(frozen=True)
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def for_size(cls, size: int) -> 'Camera':
        focal = 1.4 * size
        return cls(focal, focal, (size - 1) / 2.0, (size - 1) / 2.0, size, size)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def object_height(category: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (m) of the object above the plane at object coordinates (x, y), metres."""
    r = np.hypot(x, y)
    if category == 'puck':  # a gland-like part: rounded cylinder, a boss and a groove ring
        body = 0.022 * _smoothstep((0.055 - r) / 0.005)
        boss = 0.010 * _smoothstep((0.022 - r) / 0.003)
        groove = 0.003 * np.exp(-((r - 0.038) / 0.002) ** 2)
        return body + boss - groove * (r < 0.05)
    if category == 'dome':
        return 0.030 * np.sqrt(np.clip(1 - (x / 0.060) ** 2 - (y / 0.045) ** 2, 0, None))
    if category == 'box':
        d = np.maximum(np.abs(x) - 0.050, np.abs(y) - 0.035)
        return 0.020 * _smoothstep(-d / 0.004)
    raise ValueError(f'unknown category {category!r}; choose one of {CATEGORIES}')


def _value_noise(rng: np.random.Generator, x, y, scale: float, octaves: int = 3) -> np.ndarray:
    """Smooth texture in [-1, 1] from random sinusoids (cheap, seedable, resolution-free)."""
    out = np.zeros_like(x)
    for octave in range(octaves):
        freq = (2 ** octave) / scale
        for _ in range(3):
            angle, phase = rng.uniform(0, 2 * np.pi, size=2)
            out += np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) * 2 * np.pi + phase) \
                / (2 ** octave)
    return out / (3 * 2.0)


def _segment_distance(x, y, start, end):
    direction = end - start
    t = np.clip(((x - start[0]) * direction[0] + (y - start[1]) * direction[1])
                / (direction @ direction), 0, 1)
    return np.hypot(x - start[0] - t * direction[0], y - start[1] - t * direction[1])


def _defect_fields(defect: str, seed: int, x, y, category: str):
    """(height change, colour alpha, colour rgb, footprint) of one defect at a random place on the
    object's top, in object coordinates. footprint is the exact anomalous region. The same seed
    gives the same defect, evaluated wherever (x, y) are asked."""
    rng = np.random.default_rng(seed)
    for _ in range(100):  # a centre on the object's upper part, away from its rim
        centre = rng.uniform(-0.045, 0.045, size=2)
        if object_height(category, *centre) > 0.6 * object_height(category, 0.0, 0.0) \
                or object_height(category, *centre) > 0.015:
            break
    dx, dy = x - centre[0], y - centre[1]
    r = np.hypot(dx, dy)
    dh = np.zeros_like(x)
    alpha = np.zeros_like(x)
    colour = np.zeros(3)
    footprint = np.zeros(x.shape, dtype=bool)
    if defect in ('dent', 'bump', 'combined'):
        sigma = rng.uniform(0.004, 0.006)
        depth = rng.uniform(0.0025, 0.004) * (-1 if defect == 'dent' else 1)
        bump = np.exp(-0.5 * (r / sigma) ** 2)
        dh += depth * bump
        footprint |= bump > 0.15
    if defect == 'hole':
        radius = rng.uniform(0.003, 0.005)
        inside = r < radius
        dh[inside] = -1.0  # clipped to the plane below: a through hole
        alpha[inside], colour = 0.9, np.array([15.0, 15.0, 15.0])
        footprint |= inside
    if defect == 'cut':
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.010, 0.015) * np.array([np.cos(angle), np.sin(angle)])
        width = rng.uniform(0.0012, 0.002)
        inside = _segment_distance(x, y, centre - half, centre + half) < width
        dh[inside] -= 0.003
        alpha[inside], colour = 0.5, np.array([40.0, 35.0, 30.0])
        footprint |= inside
    if defect in ('stain', 'combined'):
        sigma = rng.uniform(0.005, 0.009)
        blob = np.exp(-0.5 * (r / sigma) ** 2) * (1 + 0.3 * _value_noise(rng, x, y, 0.01, 1))
        a = np.clip((blob - 0.3) * 2.5, 0, 0.85)
        alpha = np.maximum(alpha, a)
        colour = rng.choice([np.array([110.0, 60, 20]), np.array([30.0, 90, 40])])
        footprint |= a > 0.05
    if defect == 'scratch':
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.012, 0.02) * np.array([np.cos(angle), np.sin(angle)])
        inside = _segment_distance(x, y, centre - half, centre + half) < 0.0012
        alpha[inside], colour = 0.8, np.array([245.0, 245.0, 235.0])
        footprint |= inside
    return dh, alpha, colour, footprint


def render_sample(rng: np.random.Generator, category: str = 'puck', size: int = 256,
                  defect: Optional[str] = None, name: str = '') -> Sample:
    """One synthetic sample: random pose, plane tilt, colours, light; a defect if asked."""
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f'unknown defect {defect!r}; choose one of {DEFECTS}')
    cam = Camera.for_size(size)
    tilt = rng.uniform(-0.06, 0.06, size=2)
    offset = rng.uniform(-0.012, 0.012, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    ray_x, ray_y = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy
    texture_rng = np.random.default_rng(rng.integers(1 << 62))

    def to_object(px, py):
        qx, qy = px - offset[0], py - offset[1]
        return cos_t * qx + sin_t * qy, -sin_t * qx + cos_t * qy

    defect_seed = int(rng.integers(1 << 62))
    depth = np.full((size, size), CAMERA_HEIGHT)
    for _ in range(8):  # fixed-point ray casting against the height field
        wx, wy = ray_x * depth, ray_y * depth
        ox, oy = to_object(wx, wy)
        height = object_height(category, ox, oy)
        if defect is not None:
            height = np.maximum(height + _defect_fields(defect, defect_seed, ox, oy, category)[0],
                                0.0)
        depth = CAMERA_HEIGHT + tilt[0] * wx + tilt[1] * wy - height
    on_object = height > 1e-4

    xyz = np.stack([ray_x * depth, ray_y * depth, depth], axis=-1)
    xyz[..., 2] += rng.normal(0, 0.0002, size=depth.shape)  # sensor depth noise

    # Normals from the organized cloud; steep surfaces return no depth, like a real sensor.
    gy, gx = np.gradient(xyz, axis=0), np.gradient(xyz, axis=1)
    normals = np.cross(gx, gy)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
    normals *= -np.sign(normals[..., 2:3] + 1e-12)  # face the camera
    invalid = (np.abs(normals[..., 2]) < 0.25) | (rng.random(depth.shape) < 0.01)

    base = np.array(BASE_COLOURS[category]) * rng.uniform(0.96, 1.04, size=3)
    plane = np.array([60.0, 60, 65]) * rng.uniform(0.85, 1.15)
    ox, oy = to_object(xyz[..., 0], xyz[..., 1])
    texture = _value_noise(texture_rng, ox, oy, 0.02)[..., None]
    albedo = np.where(on_object[..., None], base * (1 + 0.08 * texture),
                      plane * (1 + 0.15 * texture))
    footprint = np.zeros(depth.shape, dtype=bool)
    if defect is not None:
        _, alpha, colour, footprint = _defect_fields(defect, defect_seed, ox, oy, category)
        albedo = albedo * (1 - alpha[..., None]) + colour * alpha[..., None]
    light = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(normals @ light, 0, 1)[..., None]  # light and normals face the camera
    brightness = rng.uniform(0.85, 1.15)
    rgb = albedo * (0.25 + 0.85 * lambert) * brightness + rng.normal(0, 2.0, size=albedo.shape)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)

    xyz = xyz.astype(np.float32)
    xyz[invalid] = 0.0
    # A hole reaches down to the plane, so its footprint counts whether or not the object is hit.
    gt = footprint & (on_object | (defect == 'hole'))
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=int(defect is not None),
                  defect=defect or 'good', name=name, intrinsics=cam.matrix())


def write_dataset(root, category: str = 'puck', size: int = 256, n_train: int = 40,
                  n_validation: int = 8, n_test_good: int = 8, n_test_per_defect: int = 4,
                  seed: int = 0, defects=DEFECTS) -> Path:
    """Write one category in the MVTec 3D-AD layout under root; returns the category folder.

    Refuses to write into a category folder that already holds files (nothing is overwritten).
    """
    category_dir = Path(root) / category
    refuse_existing_output(category_dir, flag='', holds='a dataset')
    rng = np.random.default_rng(seed)
    plan = [('train', 'good', None, n_train), ('validation', 'good', None, n_validation),
            ('test', 'good', None, n_test_good)]
    plan += [('test', d, d, n_test_per_defect) for d in defects]
    for split, folder, defect, count in plan:
        for i in range(count):
            sample = render_sample(rng, category, size, defect, name=f'{split}/{folder}/{i:03d}')
            base = category_dir / split / folder
            write_rgb(base / 'rgb' / f'{i:03d}.png', sample.rgb)
            write_xyz(base / 'xyz' / f'{i:03d}.tiff', sample.xyz)
            if split == 'test':
                write_gray(base / 'gt' / f'{i:03d}.png', sample.gt.astype(np.uint8) * 255)
    cam = Camera.for_size(size)
    (category_dir / 'calibration').mkdir(parents=True, exist_ok=True)
    (category_dir / 'calibration' / 'camera_parameters.json').write_text(json.dumps(
        {'camera_type': 'pinhole', 'fx': cam.fx, 'fy': cam.fy, 'cx': cam.cx, 'cy': cam.cy,
         'image_width': size, 'image_height': size, 'seed': seed}, indent=2))
    return category_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='dbmr-synthetic', description='Write a synthetic RGB-D anomaly dataset in the '
        'MVTec 3D-AD layout (<output>/<category>/{train,validation,test}).')
    parser.add_argument('--output', required=True, help='dataset root to create')
    parser.add_argument('--category', default='puck', choices=CATEGORIES)
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    parser.add_argument('--train', type=int, default=40, help='good training samples')
    parser.add_argument('--validation', type=int, default=8, help='good validation samples')
    parser.add_argument('--test-good', type=int, default=8, help='good test samples')
    parser.add_argument('--test-per-defect', type=int, default=4,
                        help=f'test samples per defect type {DEFECTS}')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    return run_command('dbmr-synthetic', lambda: print(write_dataset(
        args.output, args.category, args.size, args.train, args.validation, args.test_good,
        args.test_per_defect, args.seed)))


if __name__ == '__main__':
    sys.exit(main())
