"""An eval-mode WS model exports as it is: torch.export and both ONNX exporters give graphs of
standard ops only (no mmdet_eps op, no Python op), and ONNX Runtime reproduces eager."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config
from torch.torch_version import TorchVersion

from mmdet_eps.models.backbones import WSResNet
from tests.conftest import REPO, needs_compile, needs_torch

TOY_CONFIG = REPO / 'configs/toy/cascade_rcnn_ws_eps_r18_toy.py'


class DetectorTensors(torch.nn.Module):
    """A two-stage detector's networks for deployment: backbone, neck, the RPN head's maps and
    every RoI-head stage's scores and deltas for given pooled RoI features. mmdet's
    ``mode='tensor'`` also runs the RPN's NMS and the RoI extractor's per-level routing between
    them: data-dependent steps without weights that deployment tools replace (mmdeploy rewrites
    both); every normalized conv is here."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, roi_feats: torch.Tensor) -> tuple:
        feats = self.detector.extract_feat(images)
        cls_maps, box_maps = self.detector.rpn_head(feats)
        stages = [head(roi_feats) for head in self.detector.roi_head.bbox_head]
        return (*feats, *cls_maps, *box_maps, *[t for stage in stages for t in stage])


def _calibrated(model: torch.nn.Module, inputs: tuple) -> torch.nn.Module:
    """``model`` in eval mode with BN statistics of a few batches like ``inputs`` (fresh BN
    statistics under unit-variance WS weights would blow activations up to 1e20)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*[torch.randn_like(x) for x in inputs])
    model.eval()
    return model


def _backbone():
    torch.manual_seed(0)
    inputs = (torch.randn(2, 3, 64, 64), )
    return _calibrated(WSResNet(depth=18, base_channels=8, norm_eval=False), inputs), inputs


def _detector():
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    detector = MODELS.build(Config.fromfile(TOY_CONFIG).model)
    inputs = (torch.randn(2, 3, 128, 160), torch.randn(3, 64, 7, 7))
    return _calibrated(DetectorTensors(detector), inputs), inputs


MODELS_TO_EXPORT = {
    'ws_resnet': _backbone,
    'toy_cascade_rcnn': pytest.param(_detector, marks=pytest.mark.slow)
}


def _ops_of(graph_module) -> set:
    return {str(n.target) for n in graph_module.graph.nodes if n.op == 'call_function'}


def _eager(model, inputs):
    with torch.no_grad():
        return [o.numpy() for o in model(*inputs)]


def _run_onnx(path, inputs):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, (x.numpy() for x in inputs))))


@needs_compile
@pytest.mark.parametrize('build', MODELS_TO_EXPORT.values(), ids=MODELS_TO_EXPORT.keys())
def test_torch_export_holds_standard_ops_only(build):
    model, inputs = build()
    program = torch.export.export(model, inputs)
    ops = _ops_of(program.graph_module)
    assert ops and not [op for op in ops if 'mmdet_eps' in op]
    assert all(op.startswith('aten.') or op.startswith('<built-in') for op in ops), ops
    for a, b in zip(program.module()(*inputs), _eager(model, inputs)):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('dynamo', [
    pytest.param(True, id='default_exporter',
                 marks=needs_torch('2.5', 'torch.onnx.export(dynamo=True)')),
    pytest.param(False, id='torchscript')])
@pytest.mark.parametrize('build', MODELS_TO_EXPORT.values(), ids=MODELS_TO_EXPORT.keys())
def test_onnx_export_runs_in_onnxruntime_like_eager(build, dynamo, tmp_path):
    model, inputs = build()
    path = tmp_path / 'model.onnx'
    # torch < 2.5 has the TorchScript exporter only, without the keyword
    chosen = dict(dynamo=dynamo) if TorchVersion(torch.__version__) >= '2.5' else {}
    torch.onnx.export(model, inputs, str(path), **chosen)
    graph = onnx.load(str(path)).graph
    domains = {node.domain for node in graph.node}
    assert domains <= {'', 'ai.onnx'}, domains  # standard ONNX operators only
    assert not [n for n in graph.node if 'mmdet_eps' in n.op_type or n.op_type == 'PythonOp']
    for a, b in zip(_run_onnx(path, inputs), _eager(model, inputs)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
