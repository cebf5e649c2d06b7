"""Which torch device a command or node runs on."""
import torch


def resolve_device(device: str = 'auto') -> torch.device:
    """'auto' (CUDA where available, else the CPU), 'cpu' or 'cuda[:N]'; ValueError for CUDA
    without a GPU."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} requested but CUDA is not available')
    return torch.device(device)
