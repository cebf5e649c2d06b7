"""Synthetic good parts preprocessed to model size, as the training sees them (shared by tests)."""
import numpy as np
import torch

from dbmr_ros.data.preprocess import PreprocessConfig, preprocess
from dbmr_ros.data.synthetic import render_sample


def model_size_parts(count: int, image_size: int, render_size: int, seed: int):
    """`count` rendered pucks -> rgb (N, S, S, 3) uint8 and xyz (N, S, S, 3) float32 tensors."""
    pcfg = PreprocessConfig(image_size=image_size, dbscan_min_points=8)
    rng = np.random.default_rng(seed)
    pairs = [preprocess(s.rgb, s.xyz, pcfg) for s in
             (render_sample(rng, 'puck', render_size) for _ in range(count))]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs])))
