"""SessionConfig: session options as data, bad values refused when the config is made."""

import onnxruntime as ort
import pytest

from asc_deploy.ort_runner import GraphOptimization, SessionConfig


def test_defaults_suit_a_small_machine():
    options = SessionConfig().session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 0 and options.inter_op_num_threads == 1
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern


@pytest.mark.parametrize("level, expected", [("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                             (GraphOptimization.BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                                             ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)])
def test_graph_optimization_by_member_or_value(level, expected):
    config = SessionConfig(intra_op_threads=2, graph_optimization=level, enable_memory_arena=False)
    assert isinstance(config.graph_optimization, GraphOptimization)
    options = config.session_options()
    assert options.graph_optimization_level == expected and options.intra_op_num_threads == 2
    assert not options.enable_cpu_mem_arena


def test_bad_values_are_refused_early():
    with pytest.raises(ValueError, match="graph_optimization must be one of"):
        SessionConfig(graph_optimization="fastest")
    with pytest.raises(ValueError, match="intra_op_threads must be >= 0"):
        SessionConfig(intra_op_threads=-1)


def test_spinning_is_a_setting_not_a_property_of_the_graph(exported):
    from asc_deploy.ort_runner import OnnxRuntimeRunner

    def spinning(options) -> str:
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(SessionConfig().session_options()) == "1"
    assert spinning(SessionConfig(allow_spinning=False).session_options()) == "0"
    for config, expected in ((SessionConfig(), "1"), (SessionConfig(allow_spinning=False), "0")):
        with OnnxRuntimeRunner(exported("ce", "fp32", True, "cpu"), config=config) as runner:  # a looped graph too
            assert spinning(runner.session.get_session_options()) == expected
