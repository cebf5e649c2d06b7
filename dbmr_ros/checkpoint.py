"""Checkpoints: one safetensors file holding the weights and, in its header, JSON metadata (model,
preprocessing and synthetic-anomaly config, calibration, dataset/class, code version).
Loading never unpickles anything. Writes are atomic (temp file + rename)."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from dbmr_ros import __version__
from dbmr_ros.calibration import Calibration
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.preprocess import PreprocessConfig
from dbmr_ros.dataclass_dict import RemovedOptionError
from dbmr_ros.files import atomic_write
from dbmr_ros.model.config import DBMRConfig
from dbmr_ros.model.dbmrnet import DBMRNet

FORMAT = 'dbmr_ros/checkpoint-v2'


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or does not match the model."""


@dataclass
class CheckpointMeta:
    model: DBMRConfig
    preprocess: PreprocessConfig
    calibration: Calibration = field(default_factory=Calibration)
    anomalies: Optional[AnomalyConfig] = None   # what the scoring head was trained on
    dataset: str = ''
    category: str = ''
    epoch: int = 0
    code_version: str = __version__

    def to_json(self) -> str:
        return json.dumps({'format': FORMAT, 'model': self.model.to_dict(),
                           'preprocess': self.preprocess.to_dict(),
                           'calibration': self.calibration.to_dict(),
                           'anomalies': None if self.anomalies is None else
                           self.anomalies.to_dict(),
                           'dataset': self.dataset, 'category': self.category,
                           'epoch': self.epoch, 'code_version': self.code_version})

    @classmethod
    def from_json(cls, text: str) -> 'CheckpointMeta':
        data = json.loads(text)
        if data.get('format') != FORMAT:
            raise ValueError(f'format {data.get("format")!r} is not {FORMAT!r} (written by '
                             'another dbmr_ros version: retrain, or use that version)')
        anomalies = data.get('anomalies')
        return cls(model=DBMRConfig.from_dict(data['model']),
                   preprocess=PreprocessConfig.from_dict(data['preprocess']),
                   calibration=Calibration.from_dict(data.get('calibration', {})),
                   anomalies=None if anomalies is None else AnomalyConfig.from_dict(anomalies),
                   dataset=data.get('dataset', ''), category=data.get('category', ''),
                   epoch=data.get('epoch', 0), code_version=data.get('code_version', ''))


def save_checkpoint(path, state_dict: Dict[str, torch.Tensor], meta: CheckpointMeta) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                                    metadata={'dbmr': meta.to_json()}))


def load_checkpoint(path):
    """-> (state_dict, CheckpointMeta); raises CheckpointError naming the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        with safe_open(str(path), framework='pt') as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f'checkpoint {path} is truncated or not a safetensors file: '
                              f'{error}') from error
    if 'dbmr' not in header:
        raise CheckpointError(f'checkpoint {path} has no dbmr_ros metadata (not written by '
                              'dbmr-train?)')
    try:
        meta = CheckpointMeta.from_json(header['dbmr'])
    except RemovedOptionError as error:
        raise CheckpointError(f'checkpoint {path} was trained with an option this version '
                              f'no longer has: {error}; retrain it, or use the version that '
                              f'wrote it ({json.loads(header["dbmr"]).get("code_version")})'
                              ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f'checkpoint {path} has unreadable metadata: {error}') from error
    return state, meta


def build_model(path, device='cpu'):
    """Load a checkpoint into a DBMRNet in eval mode: -> (model, meta)."""
    state, meta = load_checkpoint(path)
    model = DBMRNet(meta.model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f'checkpoint {path} does not match its model config: '
                              f'{str(error).splitlines()[-1].strip()}') from error
    if missing or unexpected:
        raise CheckpointError(f'checkpoint {path} does not match its model config: missing '
                              f'{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}')
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f'checkpoint {path} has non-finite weights in {bad[:5]}')
    return model.to(device).eval(), meta
