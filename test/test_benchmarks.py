"""The benchmark scripts that are cheap enough to run here, end to end (their figures are
printed, not asserted: speed is measured by them, not by tests)."""
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbmr_ros.checkpoint import load_checkpoint, save_checkpoint
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.resources import share_dir

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_sweep_inference_prints_one_row_per_value(synthetic_root):
    out = _run(str(BENCHMARKS / 'sweep_inference.py'),
               str(share_dir() / 'models' / 'dbmr_default.safetensors'),
               '--data-root', str(synthetic_root), '--category', 'puck',
               '--set', 'smoothing_sigma=4,2', '--fix', 'map_margin=16', '--copies', '1',
               '--unseen-copies', '1', '--per-kind')
    assert 'puck validation/good (3) + 1 synthetic anomalies on each, map_margin=16' in out
    rows = [line for line in out.splitlines() if line.startswith('| smoothing_sigma=')]
    assert len(rows) == 2 and '(trained)' in rows[0]
    metrics = [float(cell) for cell in rows[1].strip('|').split('|')[1:]]
    # Both scorings on both selection sets: the training's kinds, then the unseen kinds.
    assert len(metrics) == 12 and all(0.0 <= m <= 1.0 for m in metrics)
    # --per-kind: one line per value, the learned map's AUPRO@0.3 of every unseen kind.
    kinds = [line.split('per kind: ')[1] for line in out.splitlines() if 'per kind: ' in line]
    assert len(kinds) == 2
    figures = dict(item.rsplit(' ', 1) for item in kinds[1].split(', '))
    assert {f'unseen_{kind}' for kind in ('bend', 'cut', 'scratch', 'crater', 'shaved',
                                          'stain')} <= set(figures), figures
    assert all(0.0 <= float(v) <= 1.0 for v in figures.values())


def test_selection_sets_prints_both_sets_and_every_kind(synthetic_root):
    out = _run(str(BENCHMARKS / 'selection_sets.py'),
               str(share_dir() / 'models' / 'dbmr_default.safetensors'),
               '--data-root', str(synthetic_root), '--dataset', 'synthetic', '--category', 'puck',
               '--copies', '1')
    rows = {line.split('|')[1].strip(): [cell.strip() for cell in line.strip('|').split('|')[1:]]
            for line in out.splitlines() if line.startswith('| training') or
            line.startswith('| unseen')}
    for name in ('training kinds', 'unseen kinds'):
        for scoring in ('learned', 'paper'):
            assert all(0.0 <= float(v) <= 1.0 for v in rows[f'{name}, {scoring}']), rows
    for kind in ('bend', 'cut', 'scratch', 'crater', 'shaved', 'stain'):
        assert f'unseen kinds: {kind}, learned' in rows


def test_selection_sets_judge_every_checkpoint_on_the_first_ones_kinds(synthetic_root, tmp_path):
    # The shipped weights again, as if trained on thin strokes only: on their own kinds the
    # first set differs; on the first checkpoint's kinds it is the same set, so the same rows.
    shipped = share_dir() / 'models' / 'dbmr_default.safetensors'
    state, meta = load_checkpoint(shipped)
    strokes = save_checkpoint(tmp_path / 'strokes.safetensors', state, dataclasses.replace(
        meta, anomalies=AnomalyConfig(stroke_share=1.0)))

    def training_rows(*flags):
        out = _run(str(BENCHMARKS / 'selection_sets.py'), str(shipped), str(strokes),
                   '--data-root', str(synthetic_root), '--dataset', 'synthetic', '--category',
                   'puck', '--copies', '1', *flags)
        return [line for line in out.splitlines() if line.startswith('| training kinds, ')]

    own, first = training_rows(), training_rows('--training-kinds', 'first')
    assert len(own) == len(first) == 4 and own[:2] == first[:2]
    assert first[2:] == first[:2] and own[2:] != own[:2]


def test_selection_sets_add_the_real_defects_kept_in_validation(synthetic_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(synthetic_root, root)
    shutil.copytree(root / 'puck' / 'test' / 'bump', root / 'puck' / 'validation' / 'bump')
    out = _run(str(BENCHMARKS / 'selection_sets.py'),
               str(share_dir() / 'models' / 'dbmr_default.safetensors'),
               '--data-root', str(root), '--dataset', 'synthetic', '--category', 'puck',
               '--copies', '1')
    rows = {line.split('|')[1].strip(): [cell.strip() for cell in line.strip('|').split('|')[1:]]
            for line in out.splitlines() if line.startswith('| real defects')}
    assert set(rows) == {'real defects, learned', 'real defects, paper',
                         'real defects: bump, learned'}, out
    assert all(0.0 <= float(v) <= 1.0 for v in rows['real defects, learned'][:3]), rows


def test_head_input_gap_prints_each_input_for_both_splits(synthetic_root):
    out = _run(str(BENCHMARKS / 'head_input_gap.py'),
               str(share_dir() / 'models' / 'dbmr_default.safetensors'),
               '--data-root', str(synthetic_root), '--dataset', 'synthetic', '--category', 'puck',
               '--samples', '3')
    rows = {tuple(cell.strip() for cell in line.strip('|').split('|')[:2]):
            [float(cell) for cell in line.strip('|').split('|')[2:]]
            for line in out.splitlines() if line.startswith(('| train', '| validation'))}
    for split in ('train', 'validation'):
        for name in ('map_2d', 'map_3d', 'shape_prior', 'learned map', 'image score'):
            mean, *quantiles = rows[(split, name)]
            assert quantiles == sorted(quantiles), (split, name, quantiles)
        for name in ('learned map', 'image score', 'learned map, own entries left out',
                     'image score, own entries left out'):   # probabilities
            assert all(0 <= v <= 1 for v in rows[(split, name)]), rows
    # An unseen part has no entries of its own in the coreset: the same maps both ways.
    for name in ('learned map', 'image score'):
        assert rows[('validation', name)] == rows[('validation', f'{name}, own entries left out')]


def test_sweep_inference_refuses_a_trained_field():
    result = subprocess.run([sys.executable, str(BENCHMARKS / 'sweep_inference.py'), 'x',
                             '--data-root', '.', '--category', 'c', '--set', 'embed_dim=64'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'smoothing_sigma' in result.stderr
    result = subprocess.run([sys.executable, str(BENCHMARKS / 'sweep_inference.py'), 'x',
                             '--data-root', '.', '--category', 'c', '--set', 'map_margin=8',
                             '--fix', 'smoothing_sigma=1,2'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'one value expected' in result.stderr


def test_ablate_head_trains_each_variant_and_prints_its_row(synthetic_root):
    out = _run(str(BENCHMARKS / 'ablate_head.py'),
               str(share_dir() / 'models' / 'dbmr_default.safetensors'),
               '--data-root', str(synthetic_root), '--category', 'puck', '--head-epochs', '1',
               '--copies', '1', '--variants', 'default', 'strokes', 'coreset-4096',
               'coreset-fine', 'coreset-r3', 'image-loss')
    header = next(line for line in out.splitlines() if line.startswith('| head training'))
    assert 'AUPRO@0.3 displaced' in header and 'AUPRO@0.3 rgb+removed' in header
    assert 'unseen kinds I-AUROC' in header and 'AUPRO@0.3 scratch' in header
    rows = [line for line in out.splitlines()
            if line.startswith(('| focal loss', '| a third', '| the coreset', '| the focal'))]
    assert len(rows) == 6 and '(default)' in rows[0] and 'strokes' in rows[1]
    assert '4096' in rows[2] and '4 px patches' in rows[3] and '7 x 7' in rows[4]
    assert 'image score' in rows[5]
    for row in rows:
        cells = row.strip('|').split('|')[1:-1]
        assert len(cells) == 3 + 5 + 3 + 6
        metrics = [float(cell) for cell in cells if cell.strip() != '-']
        assert len(metrics) >= 4 and all(0.0 <= m <= 1.0 for m in metrics)


def test_profile_detector_on_the_cpu():
    out = _run(str(BENCHMARKS / 'profile_detector.py'), '--calls', '1', '--rows', '3')
    assert 'sorted by self_cpu_time_total' in out and 'per call:' in out


def test_bench_preprocess_prints_every_stage_on_the_cpu():
    out = _run(str(BENCHMARKS / 'bench_preprocess.py'), '--calls', '1')
    for stage in ('raw frames to the device, one thread', 'support plane', 'grid components',
                  'near cluster', 'all stages, one graph', 'numpy, per frame'):
        assert f'| {stage}' in out, out


def test_compare_preprocessing_on_the_real_validation_split(mvtec_root):
    out = _run(str(BENCHMARKS / 'compare_preprocessing.py'), '--data-root', str(mvtec_root),
               '--category', 'cable_gland', '--splits', 'validation')
    row = next(line for line in out.splitlines() if line.startswith('| validation |'))
    frames, flagged = (int(cell) for cell in row.strip('|').split('|')[1:3])
    assert frames == 23 and flagged == 0, out


def test_gpu_check_script_parses():
    subprocess.run(['bash', '-n', str(BENCHMARKS / 'gpu_check.sh')], check=True)


def test_displacement_signal_prints_the_noise_and_the_tilt(synthetic_root):
    out = _run(str(BENCHMARKS / 'displacement_signal.py'), '--data-root', str(synthetic_root),
               '--category', 'puck', '--sigma', '1.5')
    rows = [line for line in out.splitlines() if line.startswith('| raw cloud')
            or line.startswith('| cloud smoothed by 1.5 px')]
    assert len(rows) == 2, out
    noise = [[float(v) for v in row.split('|')[2].split('/')] for row in rows]
    assert noise[1][1] < noise[0][1]  # smoothing lowers the normals' noise
    assert all(0 <= float(row.split('|')[3].strip(' %')) <= 100 for row in rows)


@pytest.mark.parametrize('kind,components,options', [
    ('mixture', '4', []), ('coreset', '64', []), ('coreset', '64', ['--patch-size', '4']),
    ('coreset', '64', ['--btf', '--unseen-copies', '1'])])
def test_shape_prior_alone_scores_the_selection_set(synthetic_root, kind, components, options):
    out = _run(str(BENCHMARKS / 'shape_prior_alone.py'), '--dataset', 'synthetic',
               '--data-root', str(synthetic_root), '--category', 'puck', '--components',
               components, '--kind', kind, '--patchcore', *options)
    maps = ('| shape prior', '| PatchCore', '| classic baseline')
    rows = {tuple(cell.strip() for cell in line.split('|')[1:3]):
            [float(v) for v in line.split('|')[3:7]]
            for line in out.splitlines() if line.startswith(maps)}
    names = ['shape prior', 'PatchCore, same descriptors']
    if '--btf' in options:   # the baseline's own map, and every map on the unseen kinds too
        names += ['classic baseline (FPFH + PatchCore)']
        names += [f'{name}, unseen kinds' for name in names]
        assert ('shape prior, unseen kinds', 'bend') in rows, out
    assert {name for name, _ in rows} == set(names), out
    assert re.search(r'descriptors of one frame .*: median [0-9.]+ ms', out), out
    for name in names:
        assert (name, 'all') in rows, out
        assert all(0 <= v <= 1 for v in rows[(name, 'all')])
    # The prior localises synthetic bumps and dents (pure geometry) better than chance.
    displaced = [values for (name, kind), values in rows.items()
                 if name == 'shape prior' and 'displaced' in kind]
    assert displaced and all(values[1] > 0.6 for values in displaced), out


def test_shape_prior_alone_refuses_a_patch_size_the_grid_cannot_pool():
    for size in ('5', '6'):   # not a multiple of the stride, 2; not a divisor of 224
        result = subprocess.run([sys.executable, str(BENCHMARKS / 'shape_prior_alone.py'),
                                 '--data-root', '.', '--kind', 'coreset', '--patch-size', size],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and 'must be a multiple of --stride and divide 224' \
            in result.stderr


def test_shape_prior_alone_fitted_on_the_part_with_a_background_component(synthetic_root):
    out = _run(str(BENCHMARKS / 'shape_prior_alone.py'), '--dataset', 'synthetic',
               '--data-root', str(synthetic_root), '--category', 'puck', '--components', '5',
               '--fit-on-part')
    assert "'on_part'" in out, out
    rows = {line.split('|')[2].strip(): [float(v) for v in line.split('|')[3:7]]
            for line in out.splitlines() if line.startswith('| shape prior')}
    assert all(0 <= v <= 1 for v in rows['all']), out
    assert all(values[1] > 0.6 for kind, values in rows.items() if 'displaced' in kind), out


def test_compare_weights_tells_identical_from_one_changed_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    shipped = share_dir() / 'models' / 'dbmr_default.safetensors'
    out = _run(str(BENCHMARKS / 'compare_weights.py'), str(shipped), str(shipped))
    assert out.splitlines()[-1] == 'identical' and ' 0 differ' in out
    tensors = load_file(str(shipped))
    name = sorted(name for name, t in tensors.items() if t.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 0.25
    changed = tmp_path / 'changed.safetensors'
    save_file(tensors, str(changed))
    out = _run(str(BENCHMARKS / 'compare_weights.py'), str(shipped), str(changed))
    assert out.splitlines()[-1] == 'different' and ' 1 differ' in out
    assert f'{name}: max |A - B| 0.25' in out
