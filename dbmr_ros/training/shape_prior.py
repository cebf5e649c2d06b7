"""Fitting the shape prior (`model.shape_prior`) on the training parts, before either stage.

Every patch of every training sample counts, the background's too: its descriptor is zero and
one component takes it, so the empty table scores as good. A patch that loses some of its
points to a hole or a cut averages its histograms with zeros and scores as unusual; one that
loses all of them looks like background here (the head's validity channel sees it).
scikit-learn's EM fits the mixture (deterministic for a seed); its parameters are copied into
the model's buffers, so inference needs torch only.
"""
import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model.local_shape import patch_descriptors
from dbmr_ros.model.shape_prior import ShapePrior

REGULARISATION = 1e-2   # added to each covariance's diagonal (descriptor bins run 0 to 200)


@torch.no_grad()
def training_descriptors(xyz: np.ndarray, patch_size: int, device,
                         batch_size: int = 16) -> np.ndarray:
    """(N, S, S, 3) model-size clouds (metres) -> (N * g * g, 33) patch descriptors."""
    out = []
    for start in range(0, len(xyz), batch_size):
        clouds = torch.from_numpy(xyz[start:start + batch_size]).to(device).float()
        descriptors = patch_descriptors(clouds, valid_mask(clouds), patch_size)
        out.append(descriptors.permute(0, 2, 3, 1).flatten(0, 2).cpu().numpy())
    return np.concatenate(out)


def fit_shape_prior(prior: ShapePrior, xyz: np.ndarray, seed: int, device) -> dict:
    """Fit `prior` (in place) on training clouds (N, S, S, 3); returns a summary for the log."""
    descriptors = training_descriptors(xyz, prior.patch_size, device).astype(np.float64)
    mixture = GaussianMixture(len(prior.log_weights), covariance_type='full',
                              reg_covar=REGULARISATION, max_iter=200, random_state=seed)
    mixture.fit(descriptors)
    on_part = descriptors[np.abs(descriptors).sum(1) > 0]
    centre, spread = load_mixture(prior, mixture.means_, mixture.precisions_cholesky_,
                                  mixture.weights_, on_part)
    return {'patches': len(descriptors), 'on_part': len(on_part), 'converged':
            bool(mixture.converged_), 'iterations': int(mixture.n_iter_),
            'nll_median': centre, 'nll_iqr': spread}


@torch.no_grad()
def load_mixture(prior: ShapePrior, means: np.ndarray, precisions_cholesky: np.ndarray,
                 weights: np.ndarray, on_part: np.ndarray):
    """A fitted mixture's (K, D) means, (K, D, D) precision Cholesky factors and (K,) weights
    into `prior`'s buffers, and its NLL standardised on the training parts' patches `on_part`
    (N, D): median and interquartile range, returned."""
    prior.means.copy_(torch.from_numpy(means))
    prior.precision_cholesky.copy_(torch.from_numpy(precisions_cholesky))
    prior.log_weights.copy_(torch.from_numpy(np.log(weights)))
    nll = prior.nll(torch.from_numpy(on_part).to(prior.means)).cpu().numpy()
    low, centre, high = np.quantile(nll, [0.25, 0.5, 0.75])
    prior.nll_centre.fill_(float(centre))
    prior.nll_spread.fill_(float(max(high - low, 1e-3)))
    return float(centre), float(high - low)
