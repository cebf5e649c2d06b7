"""dbmr-eval --selection-sets: trained checkpoints compared on the selection sets (validation/good
with synthetic anomalies; the validation split's labelled defects), never on test samples."""
import dataclasses
import shutil

from dbmr_ros.checkpoint import load_checkpoint, save_checkpoint
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.evaluate import main as eval_main
from dbmr_ros.resources import share_dir

SHIPPED = share_dir() / 'models' / 'dbmr_default.safetensors'


def _rows(text: str, prefix: str) -> dict:
    return {line.split('|')[1].strip(): [cell.strip() for cell in line.strip('|').split('|')[1:]]
            for line in text.splitlines() if line.startswith(prefix)}


def _selection(root, output, *checkpoints, flags=()) -> str:
    assert eval_main(['--selection-sets', '--checkpoint', *map(str, checkpoints),
                      '--data-root', str(root), '--dataset', 'synthetic', '--category', 'puck',
                      '--output', str(output), '--device', 'cpu', '--copies', '1',
                      *flags]) == 0
    return (output / 'selection.md').read_text()


def test_selection_sets_print_both_sets_and_every_kind(synthetic_root, tmp_path, capsys):
    table = _selection(synthetic_root, tmp_path / 'out', SHIPPED)
    assert table.strip() in capsys.readouterr().out
    rows = _rows(table, '| ')
    for name in ('training kinds', 'unseen kinds'):
        for scoring in ('learned', 'paper'):
            assert all(0.0 <= float(v) <= 1.0 for v in rows[f'{name}, {scoring}']), rows
    for kind in ('bend', 'cut', 'scratch', 'crater', 'shaved', 'stain'):
        assert f'unseen kinds: {kind}, learned' in rows


def test_selection_sets_judge_every_checkpoint_on_the_first_ones_kinds(synthetic_root, tmp_path):
    # The shipped weights again, as if trained on removals only: on their own kinds the first
    # set differs; on the first checkpoint's kinds it is the same set, so the same rows.
    state, meta = load_checkpoint(SHIPPED)
    removals = save_checkpoint(tmp_path / 'removals.safetensors', state, dataclasses.replace(
        meta, anomalies=AnomalyConfig(modality_weights=(0.0, 1.0, 0.0), removal_share=1.0)))

    def training_rows(output, *flags):
        table = _selection(synthetic_root, tmp_path / output, SHIPPED, removals, flags=flags)
        return [line for line in table.splitlines() if line.startswith('| training kinds, ')]

    own, first = training_rows('own'), training_rows('first', '--training-kinds', 'first')
    assert len(own) == len(first) == 4 and own[:2] == first[:2]
    assert first[2:] == first[:2] and own[2:] != own[:2]


def test_selection_sets_add_the_real_defects_kept_in_validation(synthetic_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(synthetic_root, root)
    shutil.copytree(root / 'puck' / 'test' / 'bump', root / 'puck' / 'validation' / 'bump')
    rows = _rows(_selection(root, tmp_path / 'out', SHIPPED), '| real defects')
    assert set(rows) == {'real defects, learned', 'real defects, paper',
                         'real defects: bump, learned'}, rows
    assert all(0.0 <= float(v) <= 1.0 for v in rows['real defects, learned'][:3]), rows


def test_the_test_split_takes_one_checkpoint(synthetic_root, tmp_path, capsys):
    assert eval_main(['--checkpoint', str(SHIPPED), str(SHIPPED), '--data-root',
                      str(synthetic_root), '--dataset', 'synthetic', '--category', 'puck',
                      '--output', str(tmp_path / 'out')]) == 2
    assert 'one --checkpoint' in capsys.readouterr().err and not (tmp_path / 'out').exists()
