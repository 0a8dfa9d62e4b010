"""Every tool starts: each Python script answers ``--help``, each shell script parses, and every
``tools/...`` path that README.md, the Makefile and docs/ name exists."""
import importlib.util
import re
import subprocess
import sys

import pytest

from tests.conftest import LANE, REPO

TOOLS = REPO / 'tools'
SCRIPTS = sorted(p for p in TOOLS.rglob('*.py') if not p.name.startswith('_'))
SHELL_SCRIPTS = sorted(TOOLS.rglob('*.sh'))
DOCUMENTS = [REPO / 'README.md', REPO / 'Makefile', *sorted((REPO / 'docs').glob('*.md'))]
#: tools that run an optional package's own script (an extra of setup.py), by file name
OPTIONAL_PACKAGE = {'pretrain.py': 'mmpretrain'}
TOOL_PATH = re.compile(r'(?<![\w/.])tools/[\w/]+\.(?:py|sh)\b')  # not tests/tools/...


def _ids(paths):
    return [str(p.relative_to(TOOLS)) for p in paths]


@pytest.mark.parametrize('script', SCRIPTS, ids=_ids(SCRIPTS))
def test_help(script):
    package = OPTIONAL_PACKAGE.get(script.name)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f'{package} is not installed: {LANE}')
    proc = subprocess.run([sys.executable, str(script), '--help'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.lstrip().startswith('usage:')


@pytest.mark.parametrize('script', SHELL_SCRIPTS, ids=_ids(SHELL_SCRIPTS))
def test_shell_script_parses(script):
    proc = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_documented_tool_paths_exist():
    named = {(doc.name, path) for doc in DOCUMENTS
             for path in TOOL_PATH.findall(doc.read_text(encoding='utf-8'))}
    assert any(doc == 'README.md' for doc, _ in named)
    missing = sorted((doc, path) for doc, path in named if not (REPO / path).is_file())
    assert not missing, f'paths named in the docs that do not exist: {missing}'
