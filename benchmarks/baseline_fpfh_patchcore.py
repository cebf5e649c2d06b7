"""The classic 3D baseline on our test samples: FPFH + PatchCore as Back to the Feature runs it.

Back to the Feature (Horwitz & Hoshen, CVPR-W 2023; "BTF") is the hand-crafted reference of
MVTec 3D-AD. Here it runs on the same preprocessed clouds, test samples and metrics as
`dbmr-eval`, so the two tables compare like with like (not a test; nothing here is tuned).

- Features: FPFH (Rusu et al., ICRA 2009) of every valid point of the 224 px cleaned cloud,
  computed as Open3D's `compute_fpfh_feature` does (pair features, 11 bins each, the
  neighbours' histograms weighted by 1 / squared distance) with BTF's search: normals from the
  30 nearest points, FPFH over the 100 nearest (BTF's radii, 0.1 and 0.25 m, are wider than a
  part, so its hybrid search takes the nearest `max_nn`). Normals point toward the camera
  (Open3D leaves their sign to its eigen solver). `--open3d` takes Open3D's own normals and
  FPFH instead, where Open3D is installed (it is not a dependency).
- PatchCore as BTF: each image's feature map 3x3 averaged, then adaptively averaged to 28x28
  patches; the training patches, reduced to a greedy k-centre coreset of 10 %; a test patch's
  score is its nearest-neighbour distance; the image score is the largest, re-weighted by the
  softmax over its 3 neighbours in the bank (PatchCore's rule); the map is the patch scores
  upsampled bilinearly to 224, smoothed (Gaussian, sigma 4 px) and resized to the input.

    .venv/bin/python benchmarks/baseline_fpfh_patchcore.py --data-root ../shared/data/mvtec3d \\
        --category cable_gland [--open3d]
"""
import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from dbmr_ros.data import open_dataset, preprocess, PreprocessConfig
from dbmr_ros.data.preprocess import to_input_size
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model.local_shape import BINS, pair_bins
from dbmr_ros.report import CategoryResults
from dbmr_ros.training.shape_prior import greedy_coreset

NORMAL_NEIGHBOURS, FPFH_NEIGHBOURS = 30, 100   # BTF: max_nn of its two hybrid searches
PATCH_GRID, CORESET_SHARE, REWEIGHT_NEIGHBOURS, MAP_SIGMA = 28, 0.1, 3, 4.0


def estimate_normals(points: np.ndarray, neighbours: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """(N, 3) -> (N, 3) unit normals: the smallest principal axis of each point's nearest
    points (itself included), pointing toward the camera at the origin."""
    _, index = cKDTree(points).query(points, k=min(neighbours, len(points)))
    near = points[index] - points[index].mean(1, keepdims=True)
    normals = np.linalg.eigh(near.transpose(0, 2, 1) @ near)[1][..., 0]
    return np.where(((normals * points).sum(-1) > 0)[:, None], -normals, normals)


def _pair_bins(p1, n1, p2, n2) -> np.ndarray:
    """(..., 3) arrays of pairs -> (..., 3) bin indices in [0, 33) (the package's pair features,
    which are Open3D's: test/test_baseline.py)."""
    shape = np.broadcast_shapes(p1.shape, n1.shape, p2.shape, n2.shape)
    pairs = [torch.from_numpy(np.broadcast_to(a, shape).copy()).movedim(-1, 0)[None]
             for a in (p1, n1, p2, n2)]
    return pair_bins(*pairs)[0].movedim(0, -1).numpy()


def fpfh(points: np.ndarray, normals: np.ndarray,
         neighbours: int = FPFH_NEIGHBOURS) -> np.ndarray:
    """(N, 3) points and normals -> (N, 33) FPFH, as Open3D computes it over the nearest
    `neighbours` (the point itself first, skipped)."""
    count = len(points)
    distance, index = cKDTree(points).query(points, k=min(neighbours, count))
    others, squared = index[:, 1:], distance[:, 1:] ** 2
    bins = _pair_bins(points[:, None], normals[:, None], points[others], normals[others])
    rows = np.repeat(np.arange(count), bins.shape[1] * 3)
    spfh = np.bincount(rows * 3 * BINS + bins.reshape(-1), minlength=count * 3 * BINS)
    spfh = spfh.reshape(count, 3 * BINS) * (100.0 / others.shape[1])
    weights = np.where(squared > 0, 1.0 / np.where(squared > 0, squared, 1.0), 0.0)
    weighted = np.einsum('nk,nkf->nf', weights, spfh[others]).reshape(count, 3, BINS)
    sums = weighted.sum(-1, keepdims=True)
    weighted *= np.where(sums > 0, 100.0 / np.where(sums > 0, sums, 1.0), 0.0)
    return weighted.reshape(count, 3 * BINS) + spfh


def open3d_fpfh(points: np.ndarray) -> np.ndarray:
    """BTF's own feature code path: Open3D's normals and FPFH with its hybrid searches."""
    import open3d
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.estimate_normals(open3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=30))
    return np.asarray(open3d.pipelines.registration.compute_fpfh_feature(
        cloud, open3d.geometry.KDTreeSearchParamHybrid(radius=0.25, max_nn=100)).data).T


def patch_features(xyz: np.ndarray, use_open3d: bool = False) -> torch.Tensor:
    """(S, S, 3) cleaned cloud -> (28 * 28, 33) patch features (0 where no point), as BTF."""
    valid = valid_mask(xyz)
    points = xyz[valid].astype(np.float64)
    features = np.zeros((*valid.shape, 3 * BINS))
    if len(points) > 1:
        features[valid] = (open3d_fpfh(points) if use_open3d
                           else fpfh(points, estimate_normals(points)))
    grid = F.avg_pool2d(torch.from_numpy(features).permute(2, 0, 1)[None].float(), 3, stride=1)
    grid = F.adaptive_avg_pool2d(grid, PATCH_GRID)
    return grid[0].flatten(1).T


def coreset(bank: torch.Tensor, share: float = CORESET_SHARE) -> torch.Tensor:
    """PatchCore's greedy k-centre subsample of `share` of the patches."""
    return bank[greedy_coreset(bank, max(1, int(share * len(bank))))]


def score(patches: torch.Tensor, bank: torch.Tensor):
    """(P, F) test patches -> image score and (28, 28) patch scores (PatchCore, as BTF)."""
    distances, nearest = torch.cdist(patches, bank).min(1)
    worst = int(distances.argmax())
    neighbours = torch.cdist(bank[nearest[worst]][None], bank)[0].topk(
        REWEIGHT_NEIGHBOURS, largest=False).indices[1:]
    spread = torch.linalg.norm(patches[worst] - bank[neighbours], dim=1)
    scale = patches.shape[1] ** 0.5
    weight = 1 - torch.exp(distances[worst] / scale) / torch.exp(spread / scale).sum()
    return float(weight * distances[worst]), distances.view(PATCH_GRID, PATCH_GRID)


def input_size_map(patch_scores: torch.Tensor, size: int, shape, pcfg) -> np.ndarray:
    """(28, 28) -> the input's (H, W): bilinear to the model size, smoothed, padding undone."""
    model_map = F.interpolate(patch_scores[None, None], size=(size, size), mode='bilinear',
                              align_corners=False)[0, 0].numpy()
    return to_input_size(gaussian_filter(model_map, MAP_SIGMA), shape, pcfg)


def run(kind, root, category, use_open3d=False, log=print) -> CategoryResults:
    pcfg = PreprocessConfig()
    cache = PreprocessCache(pcfg)

    def prepared(ref):
        sample = ref.load()
        return sample, preprocess(sample.rgb, sample.xyz, pcfg,
                                  cache.cleaned(ref.xyz_path, sample.xyz))[1]

    started = time.perf_counter()
    train = open_dataset(kind, root, category, 'train')
    bank = torch.cat([patch_features(prepared(ref)[1], use_open3d) for ref in train])
    bank = coreset(bank)
    log(f'memory bank: {len(bank)} patches from {len(train)} training samples '
        f'({time.perf_counter() - started:.0f} s)')
    results = CategoryResults()
    for ref in open_dataset(kind, root, category, 'test'):
        sample, xyz = prepared(ref)
        image_score, patch_scores = score(patch_features(xyz, use_open3d), bank)
        anomaly_map = input_size_map(patch_scores, pcfg.image_size, sample.gt.shape, pcfg)
        results.add(sample.label, sample.gt, anomaly_map, None, None, image_score,
                    kind=sample.defect)
    log(f'{len(results.labels)} test samples scored ({time.perf_counter() - started:.0f} s '
        'in all)')
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', default='cable_gland')
    parser.add_argument('--open3d', action='store_true',
                        help="Open3D's normals and FPFH (BTF's exact feature code; pip install "
                             'open3d, on Debian also libusb-1.0-0)')
    args = parser.parse_args(argv)
    results = run(args.dataset, args.data_root, args.category, args.open3d)
    features = 'Open3D' if args.open3d else 'ours'
    print(f'| {args.category}, FPFH ({features}) + PatchCore | I-AUROC | P-AUROC | AUPRO@0.3 | '
          'AUPRO@0.1 |\n|---|---|---|---|---|')
    rows = [('baseline', results.compute())] + [
        (f'baseline, {defect} ({values["num_anomalous"]}) vs good', values)
        for defect, values in results.compute_by_kind().items()]
    for name, metrics in rows:
        print(f'| {name} | ' + ' | '.join(
            '-' if metrics[k] is None else f'{metrics[k]:.3f}'
            for k in ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1')) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
