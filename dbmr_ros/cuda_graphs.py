"""Replayed CUDA graphs: a function of tensors recorded once per input signature, then replayed.

Eager PyTorch launches one kernel per op from Python; for a small network most of a frame's
time is the GPU waiting for those launches (the `tiny` Detector launched ~1800 kernels per frame,
the GPU busy for less than a third of the call). A replay launches them all at once.

A function qualifies when, for one input signature (shapes, dtypes, device, keyword options),
it launches the same kernels on the same buffers every time: no shape, Python branch or host
copy may depend on the values. Code on such a path that would read a value back asks
`capturing()` and takes its data-independent form instead.
"""
import logging
from collections import OrderedDict
from typing import Callable

import torch

_log = logging.getLogger(__name__)


def capturing() -> bool:
    """True while a CUDA graph is recorded on the current stream (no value may be read back)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def run_beside(device: torch.device, fn: Callable, *args):
    """fn(*args) queued on a side stream of CUDA `device`, after the work queued so far on the
    current stream; returns (result, join), join() making the current stream wait for it. For
    independent work that would leave the GPU idle queued alone (small batches). Elsewhere fn
    runs inline and join does nothing.

    Safe for the caching allocator without record_stream: the side stream starts behind
    everything queued before it, so the memory it allocates was last used by work it waits
    for, and the caller joins before it reads the result. A recorded graph keeps both branches
    (the side stream forks from and joins the capturing stream)."""
    device = torch.device(device)
    if device.type != 'cuda':
        return fn(*args), lambda: None
    current = torch.cuda.current_stream(device)
    side = _side_streams.get(device)
    if side is None:
        side = _side_streams[device] = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        result = fn(*args)
    return result, lambda: current.wait_stream(side)


_side_streams = {}


class GraphedFunction:
    """`fn(*tensors, **options)` replayed as a CUDA graph per input signature.

    Returns the graph's own output tensors, overwritten by the next call: use or copy them
    first. Tensors that are not on CUDA, or a function that cannot be recorded (it reads a
    value back, copies from the host, or the driver refuses), run eagerly; a failed recording
    is logged once and the function stays eager from then on.
    """

    def __init__(self, fn: Callable, name: str, max_graphs: int = 4):
        self.fn = fn
        self.name = name
        self.max_graphs = max_graphs  # each graph holds its activations' memory
        self.usable = True
        self._graphs = OrderedDict()  # signature -> (graph, static inputs, static outputs)

    def __call__(self, *inputs: torch.Tensor, **options):
        if not (self.usable and all(t.is_cuda for t in inputs)) or capturing():
            return self.fn(*inputs, **options)
        # Autocast and inference mode change the kernels and the buffers' kind: part of the key.
        key = (tuple((t.shape, t.dtype, t.device) for t in inputs), tuple(sorted(options.items())),
               torch.is_inference_mode_enabled(), torch.is_autocast_enabled('cuda'))
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._record(inputs, options)
            except RuntimeError as error:
                _log.warning('CUDA graph recording of %s failed (%s); it runs eagerly from now on',
                             self.name, error)
                self.usable = False
                self._graphs.clear()
                return self.fn(*inputs, **options)
            if len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            self._graphs[key] = entry
        self._graphs.move_to_end(key)
        graph, static_inputs, static_outputs = entry
        for static, given in zip(static_inputs, inputs):
            static.copy_(given)
        graph.replay()
        return static_outputs

    def _record(self, inputs, options):
        static_inputs = tuple(t.detach().clone() for t in inputs)
        device = static_inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture, as torch's graph docs ask
            self.fn(*static_inputs, **options)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.fn(*static_inputs, **options)
        return graph, static_inputs, static_outputs
