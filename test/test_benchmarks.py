"""The benchmark scripts that are cheap enough to run here, end to end (their figures are
printed, not asserted: speed is measured by them, not by tests)."""
import subprocess
import sys
from pathlib import Path

import pytest

from dbmr_ros.resources import share_dir

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_profile_detector_on_the_cpu():
    out = _run(str(BENCHMARKS / 'profile_detector.py'), '--calls', '1', '--rows', '3')
    assert 'sorted by self_cpu_time_total' in out and 'per call:' in out


def test_bench_preprocess_prints_every_stage_on_the_cpu():
    out = _run(str(BENCHMARKS / 'bench_preprocess.py'), '--calls', '1')
    for stage in ('raw frames to the device, one thread', 'support plane', 'grid components',
                  'near cluster', 'all stages, one graph', 'numpy reference, per frame'):
        assert f'| {stage}' in out, out


def test_compare_preprocessing_on_the_real_validation_split(mvtec_root):
    out = _run(str(BENCHMARKS / 'compare_preprocessing.py'), '--data-root', str(mvtec_root),
               '--category', 'cable_gland', '--splits', 'validation')
    row = next(line for line in out.splitlines() if line.startswith('| validation |'))
    frames, flagged = (int(cell) for cell in row.strip('|').split('|')[1:3])
    assert frames == 23 and flagged == 0, out


def test_gpu_check_script_parses():
    subprocess.run(['bash', '-n', str(BENCHMARKS / 'gpu_check.sh')], check=True)


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


def _table_row(out: str, header: str) -> list:
    """The cells of the row under the Markdown table whose header line is `header`."""
    lines = out.splitlines()
    row = lines[lines.index(header) + 2]
    return [cell.strip() for cell in row.strip('|').split('|')]


def test_bench_model_times_each_part_of_the_model_on_the_cpu():
    out = _run(str(BENCHMARKS / 'bench_model.py'), '--presets', 'tiny', '--frames', '1')
    header = next(line for line in out.splitlines() if line.startswith('| preset |'))
    assert 'model ms (grouping / shape prior / network / scoring)' in header, out
    cells = _table_row(out, header)
    total, parts = cells[5].split(' (')
    parts = [float(ms) for ms in parts.rstrip(')').split(' / ')]
    assert len(parts) == 4 and all(ms > 0 for ms in parts), out   # tiny has a shape prior
    assert sum(parts) == pytest.approx(float(total), abs=0.3), out


def test_bench_train_profiles_the_parts_of_each_stage():
    out = _run(str(BENCHMARKS / 'bench_train.py'), '--presets', 'tiny', '--steps', '1',
               '--profile')
    for stage, parts in (('stage 1 (reconstruction)',
                          'synthesis | grouping | forward | backward | optimizer'),
                         ('stage 2 (head)', 'synthesis | grouping | frozen network | shape '
                          'prior | head inputs | forward | backward | optimizer')):
        assert f'tiny, {stage}, batch 8' in out, out
        cells = _table_row(out, f'| {parts} |')
        assert all(float(cell.split(' (')[0]) > 0 for cell in cells), out   # every part ran
