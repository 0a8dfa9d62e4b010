"""tools/misc/build_mmcv.py: one mmcv wheel per torch line, and the C++ standard torch needs."""
import torch

from tests.conftest import load_tool

build_mmcv = load_tool('misc/build_mmcv')

# the lines of mmcv 2.1.0's setup.py that choose the standard (Linux and Windows flags)
MMCV_SETUP = """
            'nvcc': [cuda_args, '-std=c++14'] if cuda_args else ['-std=c++14'],
            'cxx': ['-std=c++14'],
                extra_compile_args['cxx'] = ['-std=c++17']
                extra_compile_args['cxx'] = ['/std:c++17']
            extra_compile_args['cxx'] = ['-Wall', '-std=c++17']
"""


def test_raise_cxx_std_rewrites_every_gcc_flag_and_nothing_else(tmp_path):
    setup_py = tmp_path / 'setup.py'
    setup_py.write_text(MMCV_SETUP)
    assert build_mmcv.raise_cxx_std(str(setup_py)) == 5
    text = setup_py.read_text()
    assert '-std=c++1' not in text and text.count('-std=c++20') == 5
    assert "['/std:c++17']" in text  # MSVC's flag is left alone


def test_wheels_are_kept_per_torch_line():
    major, minor = torch.__version__.split('.')[:2]
    assert build_mmcv.torch_line() == f'torch{major}.{minor}'
    assert build_mmcv.needs_cxx20() == ((int(major), int(minor)) >= (2, 14))  # as observed
