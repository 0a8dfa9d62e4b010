"""The timing harness (``benchmarks/_common.py``): rounds call the candidates at other depths of
the interpreter's frame stack, the same depth for every candidate of a round."""
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import _common  # noqa: E402


def test_at_depth_calls_from_a_frame_that_many_locals_larger():
    seen = []
    for words in (0, 1, 300):
        call = _common.at_depth(words)
        assert call(lambda: seen.append(sys._getframe(1).f_code.co_nlocals) or words) == words
    assert seen == [1, 2, 301]  # the argument ``fn`` and the padding


def test_round_depths_cover_a_chunk_without_repeating():
    depths = [_common.round_depth(r) for r in range(256)]
    assert len(set(depths)) == 256
    assert all(0 <= d < _common.STACK_CHUNK_WORDS and d % _common.DEPTH_STEP == 0 for d in depths)


def test_interleaved_runs_each_round_at_its_own_depth_for_every_candidate():
    depths = {'a': [], 'b': []}

    def record(name):
        return lambda: depths[name].append(sys._getframe(1).f_code.co_nlocals - 1)

    result = _common.interleaved({'a': record('a'), 'b': record('b')}, 'a', rounds=4, warmup=1)
    assert depths['a'] == depths['b'] == [_common.round_depth(r) for r in range(5)]
    assert len(set(depths['a'])) == 5 and len(result['b']['times']) == 4
