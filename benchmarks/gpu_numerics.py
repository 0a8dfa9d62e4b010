"""Numerics of the fused normalization and the ε-shifted step on a device (CUDA), torch only.

Checks, on ``--device``:

1. ``WSConv`` / ``CWNConv`` / ``WNConv`` forward and weight gradient (the normalization
   Function: layer norm forward, group-norm backward) against the plain autograd expression in
   float64 on CPU, for the weight shapes of a ResNet-50;
2. the same for groups of weights normalized together (``normalize_filter_batch``, as a
   WS-ResNet stage does);
3. the optimizer step with the package's ``EpsShiftStep`` hook (after a forward, so with the
   recorded unit filters, and without) against ``w - lr (g + λ∇R)`` of the paper's formula.

Writes ``--out`` (JSON) and exits non-zero when an error exceeds its tolerance.

    python benchmarks/gpu_numerics.py --device cuda --out $OUT/numerics.json
"""
import argparse
import json
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import environment, write_json  # noqa: E402
from _torch_only import load_package, quiet_warnings  # noqa: E402

SHAPES = [(64, 3, 7, 7), (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1), (512, 512, 3, 3),
          (2048, 512, 1, 1), (1024, 2048, 1, 1)]


def reference(w, eps, centered, divisor):
    f = w.reshape(w.shape[0], -1)
    u = f - f.mean(1, keepdim=True) if centered else f
    s = u.norm(dim=1, keepdim=True) / divisor**0.5
    return (u / (s + eps)).view_as(w)


def paper_grad(w, family, eps, lam):
    w = w.detach().clone().requires_grad_(True)
    f = w.reshape(w.shape[0], -1)
    n, m = f.shape[1], f.mean(1)
    if family == 'ws':
        r = 0.5 * lam * n * (m**2 + (f.std(1, unbiased=False) - eps)**2)
    elif family == 'wn':
        r = 0.5 * lam * (f.norm(dim=1) - eps)**2
    else:
        r = 0.5 * lam * (n * m**2 + ((f - m[:, None]).norm(dim=1) - eps)**2)
    r.sum().backward()
    return w.grad


def rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).abs().max() /
            b.double().abs().max().clamp_min(1e-30)).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', default=None)
    args = parser.parse_args(argv)
    quiet_warnings()
    pkg = load_package()
    dev = args.device
    results, worst = [], 0.
    torch.manual_seed(0)
    for shape in SHAPES:
        w64 = torch.randn(shape, dtype=torch.float64) * 0.05 + 0.01 * torch.randn(
            shape[0], 1, 1, 1, dtype=torch.float64)
        g64 = torch.randn(shape, dtype=torch.float64)
        n = w64[0].numel()
        for name, conv_cls, kwargs, centered, divisor in [
                ('ws', pkg.WSConv, {}, True, n - 1),
                ('ws_population', pkg.WSConv, dict(unbiased=False, eps=0.), True, n),
                ('cwn', pkg.CWNConv, {}, True, 1), ('wn', pkg.WNConv, {}, False, 1)]:
            conv = conv_cls(shape[1], shape[0], shape[2:], bias=False, **kwargs).to(dev)
            with torch.no_grad():
                conv.weight.copy_(w64)
            out = conv.normalize(conv.weight)
            out.backward(g64.to(dev, torch.float32))
            ref_w = w64.clone().requires_grad_(True)
            ref = reference(ref_w, conv.eps, centered, divisor)
            ref.backward(g64)
            row = dict(shape=list(shape), kind=name, fwd_rel_err=rel_err(out, ref),
                       grad_rel_err=rel_err(conv.weight.grad, ref_w.grad))
            worst = max(worst, row['fwd_rel_err'], row['grad_rel_err'])
            results.append(row)
    batch = pkg.filter_normalize.normalize_filter_batch
    for trailing, counts in [((64, 1, 1), (64, 256, 256, 256)), ((256, 3, 3), (256, 256, 256))]:
        ws64 = [torch.randn((c, ) + trailing, dtype=torch.float64) * 0.05 for c in counts]
        g64 = [torch.randn_like(w) for w in ws64]
        n = ws64[0][0].numel()
        ours = [w.to(dev, torch.float32).requires_grad_(True) for w in ws64]
        outs = batch(ours, 1e-5, True, n - 1)
        torch.autograd.backward(outs, [g.to(dev, torch.float32) for g in g64])
        refs = [w.clone().requires_grad_(True) for w in ws64]
        expected = [reference(w, 1e-5, True, n - 1) for w in refs]
        torch.autograd.backward(expected, g64)
        row = dict(shape=[sum(counts), *trailing], kind=f'batch of {len(counts)}',
                   fwd_rel_err=max(rel_err(o, e) for o, e in zip(outs, expected)),
                   grad_rel_err=max(rel_err(o.grad, r.grad) for o, r in zip(ours, refs)))
        worst = max(worst, row['fwd_rel_err'], row['grad_rel_err'])
        results.append(row)
    step_rows = []
    reg = pkg.regularizer
    for family, cls in [('ws', pkg.WSConv), ('cwn', pkg.CWNConv), ('wn', pkg.WNConv)]:
        for warm in (True, False):
            conv = cls(64, 128, 3, bias=False).to(dev)
            lam, eps, lr = 0.05, 0.02, 0.1
            opt = torch.optim.SGD([{'params': [conv.weight], 'weight_decay': 0.,
                                    reg.FAMILY_KEY: family, reg.LAMBDA_KEY: lam,
                                    reg.EPS_KEY: eps, reg.MODE_KEY: 'coupled'}], lr=lr)
            opt.register_step_pre_hook(reg.EpsShiftStep())
            x = torch.randn(2, 64, 16, 16, device=dev)
            if warm:
                conv(x).square().mean().backward()
            else:
                conv.weight.grad = torch.randn_like(conv.weight) * 1e-3
            w0, g0 = conv.weight.detach().double().cpu(), conv.weight.grad.double().cpu()
            opt.step()
            expected = w0 - lr * (g0 + paper_grad(w0, family, eps, lam))
            err = rel_err(conv.weight.detach(), expected)
            step_rows.append(dict(family=family, after_forward=warm, step_rel_err=err))
            worst = max(worst, err)
    ok = worst < 1e-4
    payload = dict(env=environment(), device=dev, ok=ok, worst_rel_err=worst,
                   normalize=results, step=step_rows)
    if dev.startswith('cuda'):
        payload['gpu'] = torch.cuda.get_device_name()
    out = args.out or osp.join(osp.dirname(osp.abspath(__file__)), 'results', 'numerics.json')
    write_json(out, payload)
    for row in results + step_rows:
        print(json.dumps(row))
    print(f'numerics on {dev}: worst relative error {worst:.2e} -> {"OK" if ok else "FAIL"}; '
          f'wrote {out}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
