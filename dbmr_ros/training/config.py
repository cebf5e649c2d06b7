"""dbmr-train's configuration (config/train_<preset>.yaml): what the two stages train, with
which synthetic anomalies and schedule, and how the threshold is chosen."""
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dbmr_ros import calibration
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.preprocess import PreprocessConfig
from dbmr_ros.dataclass_dict import from_dict
from dbmr_ros.model import DBMRConfig, PRESETS


@dataclass
class TrainConfig:
    preset: str = 'tiny'
    model: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    anomalies: dict = field(default_factory=dict)
    epochs: int = 100
    head_epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    head_lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    grad_clip: float = 1.0
    mixed_precision: bool = True  # bf16 autocast of forward passes on CUDA; CPU: float32
    augment: bool = True
    brightness_jitter: float = 0.15
    seed: int = 0
    threshold_rule: str = 'balanced'
    threshold_quantile: float = 1.0
    threshold_margin: float = 1.0
    calibration_copies: int = 2
    eval_every: int = 10
    log_images_every: int = 10

    @classmethod
    def load(cls, path) -> 'TrainConfig':
        values = yaml.safe_load(Path(path).read_text()) or {}
        return from_dict(cls, values, f'{path}: training', REMOVED_OPTIONS)

    def model_config(self):
        if self.preset not in PRESETS:
            raise ValueError(f'unknown preset {self.preset!r}; choose one of {list(PRESETS)}')
        return DBMRConfig.from_dict({**PRESETS[self.preset].to_dict(), **self.model})

    def preprocess_config(self, image_size: int) -> PreprocessConfig:
        return PreprocessConfig.from_dict({**self.preprocess, 'image_size': image_size})

    def anomaly_config(self) -> AnomalyConfig:
        return AnomalyConfig.from_dict(self.anomalies)

    def threshold_rule_config(self) -> calibration.ThresholdRule:
        return calibration.ThresholdRule(self.threshold_rule, self.threshold_quantile,
                                         self.threshold_margin)


# Options earlier versions had, with the one value this version implements (docs/design_notes.md,
# "Options that left").
REMOVED_OPTIONS = {'head_loss_per_defect': False, 'head_focal_gamma': 2.0,
                   'head_input_dropout': 0.0, 'head_image_loss': 0.0}
