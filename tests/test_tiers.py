"""The tiers tests/conftest.py makes of the markers pyproject.toml registers: ``pytest``
alone runs what carries no marker, ``-m NAME`` one tier, a node id whatever its tier, a
test in two tiers or with an unregistered marker is refused. Run in a project of its own
(pytester), with this repository's conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported here, before pytester's in-process runs: each run removes the modules it imported
# afterwards, and torch's C extension cannot be imported a second time in one process.
import torch

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.parametrize("x", [1, 2])
def test_parametrized_is_no_tier(x):
    pass

@pytest.mark.gpu
def test_on_gpu():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        addopts = "--strict-markers -ra"
        markers = ["slow: slow tests", "gpu: needs a CUDA device", "newtier: a tier added later"]
        """
    )
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_things=TESTS)
    return pytester


def test_plain_pytest_runs_only_what_carries_no_tier_marker(project):
    result = project.runpytest()
    result.assert_outcomes(passed=3, deselected=2)


def test_a_marker_registered_later_is_a_tier_and_leaves_the_fast_suite(project):
    project.makepyfile(test_new="import pytest\n\n@pytest.mark.newtier\ndef test_new():\n    pass\n")
    project.runpytest().assert_outcomes(passed=3, deselected=3)
    project.runpytest("-m", "newtier").assert_outcomes(passed=1, deselected=5)


def test_each_tier_runs_by_its_marker_and_gpu_says_why_it_skips(project):
    project.runpytest("-m", "slow").assert_outcomes(passed=1, deselected=4)
    result = project.runpytest("-m", "gpu")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=1, deselected=4)
    else:
        result.assert_outcomes(skipped=1, deselected=4)
        result.stdout.fnmatch_lines(["*gpu tier: no CUDA device here*"])


def test_a_test_named_by_its_node_id_runs_whatever_its_tier(project):
    project.runpytest("test_things.py::test_slow").assert_outcomes(passed=1)
    # Only the one named: the other tiers' tests in the files given whole stay out.
    project.runpytest("test_things.py", "test_things.py::test_slow").assert_outcomes(passed=4, deselected=1)


def test_two_tiers_on_one_test_and_unregistered_markers_are_refused(project):
    both = "import pytest\n\n@pytest.mark.slow\n@pytest.mark.gpu\ndef test_both():\n    pass\n"
    project.makepyfile(test_bad=both)
    result = project.runpytest("test_bad.py")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*test_both is in 2 tiers (gpu, slow): give it one*"])
    project.makepyfile(test_bad="import pytest\n\n@pytest.mark.slwo\ndef test_typo():\n    pass\n")
    result = project.runpytest("test_bad.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'slwo' not found in `markers` configuration option*"])
