"""Trim an unpacked mmcv 2.1 source tree so that its CUDA build compiles only the ops named.

The fallback of ``gpu_e2e.sh`` when mmcv's full CUDA build does not fit the GPU machine's time
budget: the detectors benchmarked there run only ``nms`` and ``roi_align`` on the GPU. Applied to
a throw-away copy of mmcv's sdist, never to an installed mmcv. What it changes:

1. deletes every ``mmcv/ops/csrc/pytorch/cuda/*.cu`` except ``<op>_cuda.cu`` of the ops kept;
2. rewrites ``cuda/cudabind.cpp`` (its ``#include`` lines, then prototypes, CUDA wrappers and
   ``REGISTER_DEVICE_IMPL`` lines, one block per op) keeping the includes and the blocks whose
   kernel launchers are still compiled;
3. adds ``#undef MMCV_WITH_CUDA`` at the top of the few ``pytorch/*.cpp`` files that call a
   deleted CUDA function directly (``nms_rotated``, ``nms_quadri``, ``spconv_ops``), so they
   build their CPU-only branch.

Every op keeps its Python binding and its CPU kernel, so ``import mmcv.ops`` works unchanged; an
op whose CUDA kernel was dropped raises mmcv's own "not implemented on CUDA" error when called
with CUDA tensors. The rewrite is checked: it fails if a kept file still calls a function that is
no longer compiled.

    python benchmarks/mmcv_minimal_ops.py /tmp/mmcv-2.1.0 --ops nms roi_align
"""
import argparse
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

DEFAULT_OPS = ('nms', 'roi_align')
CSRC = osp.join('mmcv', 'ops', 'csrc', 'pytorch')
UNDEF = '#undef MMCV_WITH_CUDA  // mmcv_minimal_ops: this op is built without its CUDA kernel\n'
_PARAMS = r'\((?:[^;{}()]|\([^;{}()]*\))*\)'  # a parameter list, one level of nesting
_DEFINITION = re.compile(r'\b(\w+)\s*' + _PARAMS + r'\s*(?:const\s*)?\{')
_PROTOTYPE = re.compile(r'\b(\w+)\s*' + _PARAMS + r'\s*;\s*$')
_CALL = re.compile(r'\b(\w+)\s*(?:<[^<>;{}]*>)?\s*\(')
_KEYWORDS = {'if', 'for', 'while', 'switch', 'catch', 'return', 'sizeof', 'decltype'}


def strip_comments(text: str) -> str:
    """C++ source without ``//`` and ``/* */`` comments (mmcv's sources have no ``//`` in
    string literals)."""
    return re.sub(r'//[^\n]*|/\*.*?\*/', '', text, flags=re.S)


def defined_functions(text: str) -> Set[str]:
    """Names of the functions a C++/CUDA source defines (``name(...) {``)."""
    return set(_DEFINITION.findall(strip_comments(text))) - _KEYWORDS


def used_functions(text: str) -> Set[str]:
    """Names a source calls, declares or passes as a function (``REGISTER_DEVICE_IMPL``'s
    arguments), minus those it defines itself."""
    text = strip_comments(text)
    names = set(_CALL.findall(text))
    for stmt in statements(text):
        names.update(_PROTOTYPE.findall(stmt.strip()))
        names.update(re.findall(r'REGISTER_DEVICE_IMPL\(\s*\w+\s*,\s*\w+\s*,\s*(\w+)', stmt))
    return names - defined_functions(text) - _KEYWORDS


def statements(text: str) -> List[str]:
    """Top-level statements of a file made only of prototypes, definitions and macro calls."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == '{':
            depth += 1
        elif ch == '}':
            depth -= 1
            if depth == 0:
                out.append(text[start:i + 1])
                start = i + 1
        elif ch == ';' and depth == 0:
            out.append(text[start:i + 1])
            start = i + 1
    tail = text[start:]
    if tail.strip():
        out.append(tail)
    return out


def op_blocks(text: str) -> Tuple[str, List[str]]:
    """``cudabind.cpp`` as its preprocessor lines (the ``#include`` header) and its blocks, cut
    after each run of ``REGISTER_DEVICE_IMPL`` statements: one block per op (its prototypes,
    wrappers and registrations)."""
    lines = text.splitlines(keepends=True)
    header = ''.join(line for line in lines if line.lstrip().startswith('#'))
    body = ''.join(line for line in lines if not line.lstrip().startswith('#'))
    blocks, current, registering = [], [], False
    for stmt in statements(body):
        is_register = stmt.strip().startswith('REGISTER_DEVICE_IMPL') or (
            registering and stmt.strip() == ';')
        if registering and not is_register:
            blocks.append(''.join(current))
            current = []
        current.append(stmt)
        registering = is_register
    blocks.append(''.join(current))
    return header, blocks


def trim(src: str, ops: Sequence[str] = DEFAULT_OPS) -> Dict[str, Union[int, List[str]]]:
    """Trim the mmcv source tree at ``src`` in place to the CUDA kernels of ``ops``; returns what
    was removed and patched."""
    cuda_dir = osp.join(src, CSRC, 'cuda')
    kernels = sorted(f for f in os.listdir(cuda_dir) if f.endswith('.cu'))
    keep = [f'{op}_cuda.cu' for op in ops]
    unknown = [f for f in keep if f not in kernels]
    if unknown:
        raise SystemExit(f'no such CUDA kernel file in {cuda_dir}: {unknown}')

    def read(path: str) -> str:
        with open(path, encoding='utf-8') as f:
            return f.read()

    kept_defs: Set[str] = set()
    dropped_defs: Set[str] = set()
    for name in kernels:
        (kept_defs if name in keep else dropped_defs).update(
            defined_functions(read(osp.join(cuda_dir, name))))
    gone = dropped_defs - kept_defs

    bind_path = osp.join(cuda_dir, 'cudabind.cpp')
    header, blocks = op_blocks(strip_comments(read(bind_path)))
    kept_blocks, dropped_blocks = [], []
    for block in blocks:
        (dropped_blocks if used_functions(block) & gone else kept_blocks).append(block)
    registered = [re.findall(r'REGISTER_DEVICE_IMPL\((\w+)', b) for b in kept_blocks]
    patched = []
    for name in sorted(os.listdir(osp.join(src, CSRC))):
        path = osp.join(src, CSRC, name)
        if name.endswith('.cpp') and osp.isfile(path):
            text = read(path)
            if used_functions(text) & gone:
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(UNDEF + text)
                patched.append(name)
    new_bind = header + ''.join(kept_blocks).rstrip() + '\n'
    still = used_functions(new_bind) & gone
    if still:
        raise SystemExit(f'cudabind.cpp would still call removed CUDA functions: {sorted(still)}')
    with open(bind_path, 'w', encoding='utf-8') as f:
        f.write(new_bind)
    removed = [k for k in kernels if k not in keep]
    for name in removed:
        os.remove(osp.join(cuda_dir, name))
    return dict(kept_kernels=keep, removed_kernels=removed,
                registered=sorted(r for rs in registered for r in rs),
                dropped_blocks=len(dropped_blocks), undef_cuda_in=patched)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='unpacked mmcv source tree (a copy: it is changed in place)')
    parser.add_argument('--ops', nargs='+', default=list(DEFAULT_OPS),
                        help=f'ops whose CUDA kernels are built (default: {" ".join(DEFAULT_OPS)})')
    args = parser.parse_args(argv)
    report = trim(args.src, args.ops)
    print(f'mmcv_minimal_ops: CUDA kernels kept {report["kept_kernels"]}, '
          f'{len(report["removed_kernels"])} removed; CUDA registrations kept '
          f'{report["registered"]}; CPU-only branch in {report["undef_cuda_in"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
