"""mmdet-eps: the ε-shifted L2 regularizer for weight-normalized detectors (MMDetection 3.x)."""
from setuptools import find_packages, setup


def fused_ops() -> dict:
    """The fused CPU ops (``mmdet_eps/ops/csrc``) as the plain shared library
    ``mmdet_eps._ext_torch<major>_<minor>`` (one per torch line: venvs of several lines can
    share an editable checkout), loaded with ``torch.ops.load_library``; torch must be
    importable to build them.

    ``-fopenmp`` at compile time only: ``at::parallel_for`` then runs on the OpenMP runtime that
    torch already loaded (its ``GOMP_*`` symbols resolve from libtorch's libgomp), not a second
    one."""
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    class OptionalBuildExtension(BuildExtension):
        """The ops are an optimization: a torch or compiler they do not build with installs the
        plugin without them (the torch-ops path gives the same results), saying so."""

        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as error:  # CompileError, LinkError, a missing compiler
                print(f'mmdet-eps: the fused CPU ops did not build against torch '
                      f'{torch.__version__} ({error}); installing without them: weights are '
                      'normalized with torch ops (same results)')
                self.extensions = []  # nothing to copy or to list as built

    major, minor = torch.__version__.split('.')[:2]
    ext = CppExtension(f'mmdet_eps._ext_torch{major}_{minor}',
                       ['mmdet_eps/ops/csrc/filter_normalize.cpp'],
                       extra_compile_args=['-O3', '-fopenmp', '-fno-math-errno'])
    return dict(ext_modules=[ext], cmdclass={'build_ext': OptionalBuildExtension})


setup(
    name='mmdet-eps',
    version='0.1.0',
    description='ε-shifted L2 regularizer and WS-ResNet backbones for MMDetection 3.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmdet_eps', 'mmdet_eps.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10.0,<0.11.0',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.3.0,<3.4.0',
        'pycocotools',
        'setuptools<81',
        'matplotlib',
    ],
    extras_require={
        # onnx / onnxscript / onnxruntime: the export tests run the exported files for real
        'test': ['pytest', 'pytest-timeout', 'faster-coco-eval', 'ruff', 'onnx', 'onnxscript',
                 'onnxruntime'],
        'fast': ['faster-coco-eval'],
        # ImageNet pretraining (configs/imagenet, tools/pretrain.py): mmpretrain 1.2.0, the last
        # release, accepts mmcv 2.1 / mmengine 0.10. It imports torchvision, which must be the
        # build made for the torch in place, so it is not pinned here (docs/pretrain.md).
        'pretrain': ['mmpretrain==1.2.0'],
    },
    **fused_ops(),
)
