"""What a training run reports as it goes: the log line and TensorBoard scalars of each epoch,
the selection set's metrics, and reconstruction images."""
import torch

from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.model import DBMRNet
from dbmr_ros.model.inputs import denormalise_images
from dbmr_ros.training import engine
from dbmr_ros.training.util import LOG


def log_epoch(writer, description: str, means: dict, epoch: int) -> None:
    for key, value in means.items():
        writer.add_scalar(f'train/{key}', value, epoch)
    losses = ' '.join(f'{k.replace("loss_", "")} {v:.4f}' for k, v in means.items()
                      if k.startswith('loss_'))
    LOG.info('%s loss %.4f%s %.1f img/s', description, means['loss'],
             f' ({losses})' if losses else '', means['images_per_second'])


def log_selection(writer, selection: dict, epoch: int) -> None:
    """The selection set: validation/good + synthetic anomalies on it (model resolution), and
    `real_*`, the validation split's labelled defects (input resolution), where it has any."""
    for scoring, values in selection.items():
        for key, value in values.items():
            writer.add_scalar(f'selection_{scoring}/{key}', value, epoch)
    LOG.info('epoch %d selection set (validation + synthetic anomalies): %s', epoch, '; '.join(
        f'{s} ' + ' '.join(f'{k} {v:.3f}' for k, v in values.items())
        for s, values in selection.items()))


def log_reconstructions(writer, model: DBMRNet, data, device, epoch: int) -> None:
    model.eval()
    cfg = model.cfg
    with torch.no_grad():
        batch = engine.make_batch(data[0][:2], data[1][:2], cfg, AnomalyConfig(probability=1.0),
                                  torch.Generator().manual_seed(epoch), False, 0.0, device)
        rec, _ = model.reconstruct(model.embed(batch.inp.images, batch.groups), batch.groups)
    pair = torch.cat([denormalise_images(batch.inp.images), denormalise_images(rec),
                      denormalise_images(batch.targets.images)], dim=2)
    writer.add_images('input | reconstruction | clean', (pair / 255.0).permute(0, 3, 1, 2), epoch)
