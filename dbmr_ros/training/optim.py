"""What each training stage optimizes: AdamW with warm-up and cosine decay per stage, and which
parameters train in which stage."""
import torch

from dbmr_ros.model import DBMRNet
from dbmr_ros.training.config import TrainConfig
from dbmr_ros.training.util import lr_factor


def build_optimizers(model: DBMRNet, cfg: TrainConfig, steps_per_epoch: int):
    """(optimizers, schedulers), each (reconstruction stage, head stage): AdamW, warm-up then
    cosine decay over each stage's steps."""
    head_parameters = list(model.scoring_head.parameters())
    head_ids = {id(p) for p in head_parameters}
    reconstruction = torch.optim.AdamW([p for p in model.parameters() if id(p) not in head_ids],
                                       lr=cfg.lr, weight_decay=cfg.weight_decay,
                                       betas=(0.9, 0.95))
    head = torch.optim.AdamW(head_parameters, lr=cfg.head_lr, weight_decay=1e-4)
    return (reconstruction, head), (
        torch.optim.lr_scheduler.LambdaLR(reconstruction, lambda step: lr_factor(
            step, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)),
        torch.optim.lr_scheduler.LambdaLR(head, lambda step: lr_factor(
            step, cfg.warmup_epochs * steps_per_epoch, cfg.head_epochs * steps_per_epoch)))


def stage_network(model: DBMRNet, head_stage: bool, world: int):
    """What the optimizer steps through: the network in stage 1, the head in stage 2 (the rest
    frozen), each wrapped for DDP when distributed."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith('scoring_head.') == head_stage)
    module = model.scoring_head if head_stage else model
    return torch.nn.parallel.DistributedDataParallel(module) if world > 1 else module
