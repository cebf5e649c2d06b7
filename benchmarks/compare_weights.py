"""Are two trained checkpoints the same weights? For reproducibility claims: a rerun of a training
command, the same command on another commit (a git worktree) or another CPU.

Prints how many tensors the two files share, how many differ and the largest differences, then
one verdict line: `identical` (every tensor equal bit for bit) or `different`.

    .venv/bin/python benchmarks/compare_weights.py A.safetensors B.safetensors [--top 5]
"""
import argparse
import sys

import torch
from safetensors.torch import load_file


def compare(a: dict, b: dict) -> dict:
    """{'only_a', 'only_b', 'shape', 'differ': [(name, max |a - b|)] largest first, 'common'}
    for two {name: tensor} dicts."""
    common = sorted(set(a) & set(b))
    shape, differ = [], []
    for name in common:
        if a[name].shape != b[name].shape:
            shape.append(name)
        elif not torch.equal(a[name], b[name]):
            differ.append((name, (a[name].double() - b[name].double()).abs().max().item()))
    return {'only_a': sorted(set(a) - set(b)), 'only_b': sorted(set(b) - set(a)), 'shape': shape,
            'differ': sorted(differ, key=lambda item: -item[1]), 'common': len(common)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('a')
    parser.add_argument('b')
    parser.add_argument('--top', type=int, default=5, help='largest differences printed')
    args = parser.parse_args(argv)
    found = compare(load_file(args.a), load_file(args.b))
    print(f"{found['common']} tensors in both, {len(found['differ'])} differ, "
          f"{len(found['shape'])} of another shape, {len(found['only_a'])} only in A, "
          f"{len(found['only_b'])} only in B")
    for name, gap in found['differ'][:args.top]:
        print(f'  {name}: max |A - B| {gap:.3g}')
    for name in found['shape'][:args.top]:
        print(f'  {name}: shapes differ')
    same = not (found['differ'] or found['shape'] or found['only_a'] or found['only_b'])
    print('identical' if same else 'different')
    return 0


if __name__ == '__main__':
    sys.exit(main())
