import pytest

from drllm_core.paths import LayerPath, PathConstraints, PathError, longest_skip_run


def test_order_is_derived_from_counts():
    path = LayerPath((1, 0, 2, 1))
    assert path.order == [0, 2, 2, 3]
    assert path.blocks == 4 and path.blocks_saved == 0
    assert LayerPath.from_order([0, 2, 2, 3], 4) == path


def test_default_path():
    path = LayerPath.default(5)
    assert path.is_default and path.order == [0, 1, 2, 3, 4] and path.distinct_layers() == 5


def test_from_order_rejects_going_back_and_out_of_range():
    with pytest.raises(PathError, match="earlier layer"):
        LayerPath.from_order([0, 2, 1], 3)
    with pytest.raises(PathError, match="out of range"):
        LayerPath.from_order([0, 3], 3)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ((1, 1, 1), "3 layer counts but the model has 4"),
        ((1, 3, 1, 1), "layer 1 has count 3"),
        ((1, -1, 1, 1), "layer 1 has count -1"),
        ((1, 0, 0, 0), "skips 3 consecutive layers"),
    ],
)
def test_validation_names_the_problem(counts, message):
    with pytest.raises(PathError, match=message):
        LayerPath(counts).validate(4)


def test_constraints_are_options():
    path = LayerPath((1, 0, 0, 0))
    assert not path.is_valid(4)
    assert path.is_valid(4, PathConstraints(max_skip_run=None))
    assert path.is_valid(4, None)
    with pytest.raises(PathError, match="budget of 3"):
        LayerPath((2, 1, 1, 1)).validate(4, PathConstraints(max_blocks=3))
    assert LayerPath((2, 2, 2, 2)).is_valid(4)  # length 2L is the paper's bound
    with pytest.raises(PathError, match="count 2"):
        LayerPath((2, 1)).validate(2, PathConstraints(max_count=1))


def test_longest_skip_run():
    assert longest_skip_run((0, 1, 0, 0, 1, 0)) == 2
    assert longest_skip_run(()) == 0


def test_paths_are_hashable_for_memoisation():
    assert len({LayerPath((1, 0)), LayerPath((1, 0)), LayerPath((0, 1))}) == 2
    assert str(LayerPath((1, 0, 2))) == "102"


def test_constraints_from_the_search_params_keep_the_paper_defaults():
    assert PathConstraints.from_params({}) == PathConstraints()
    unlimited = PathConstraints.from_params({"max_skip_run": None, "max_blocks": 40})
    assert unlimited == PathConstraints(max_skip_run=None, max_blocks=40)
