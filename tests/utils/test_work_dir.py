"""Reading mmengine work dirs: launch discovery, scalars files, JSON lines, key prefixes."""
import json

import pytest

from mmdet_eps.utils import LogFormatError, launch_dirs, read_json_lines, scalars_files, strip_mode


def _launch(work_dir, stamp, records):
    vis = work_dir / stamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in records))
    return vis / 'scalars.json'


def test_launches_oldest_first_and_every_way_to_name_a_run(tmp_path):
    later = _launch(tmp_path, '20240102_000000', [{'step': 2}])
    earlier = _launch(tmp_path, '20240101_000000', [{'step': 1}])
    (tmp_path / 'not_a_launch').mkdir()
    (tmp_path / '20240103_000000').mkdir()  # a launch that logged nothing yet
    assert [p.name for p in launch_dirs(tmp_path)] == [
        '20240101_000000', '20240102_000000', '20240103_000000']
    assert scalars_files(tmp_path) == [earlier, later]
    assert scalars_files(tmp_path / '20240102_000000') == [later]
    assert scalars_files(later) == [later]
    assert scalars_files(tmp_path / 'not_a_launch') == []
    with pytest.raises(FileNotFoundError, match='no such file'):
        scalars_files(tmp_path / 'absent')


def test_json_lines_skip_only_a_truncated_last_line(tmp_path):
    path = tmp_path / 'scalars.json'
    path.write_text('{"loss": 1.0, "step": 1}\n\n{"loss": 0.5, "step": 2}\n{"loss": 0.')
    with pytest.warns(UserWarning, match='truncated'):
        assert read_json_lines(path) == [{'loss': 1.0, 'step': 1}, {'loss': 0.5, 'step': 2}]
    path.write_text('{"loss": 1.0\n{"loss": 0.5}\n')
    with pytest.raises(LogFormatError, match=r'scalars\.json:1: not a JSON line'):
        read_json_lines(path)


def test_strip_mode():
    assert [strip_mode(k) for k in ('train/loss', 'val/coco/bbox_mAP', 'test/x', 'lr')] == [
        'loss', 'coco/bbox_mAP', 'x', 'lr']
