"""Group axioms for z2, p4, p4m, and that every action is a homomorphism."""

import itertools

import pytest
import torch

from attentive_gcnn.groups import GROUPS, P4, P4M, get_group

ALL = [pytest.param(g, id=g.name) for g in GROUPS.values()]


@pytest.mark.parametrize("group", ALL)
def test_axioms(group):
    n = group.order
    els = range(n)
    assert sorted(group.cayley.flatten().tolist()) == sorted(list(els) * n)  # closure: a Latin square
    for a, b, c in itertools.product(els, els, els):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))
    for a in els:
        assert group.compose(0, a) == a == group.compose(a, 0)
        assert group.compose(a, group.inverse(a)) == 0 == group.compose(group.inverse(a), a)


def test_orders_and_haar():
    assert (GROUPS["z2"].order, P4.order, P4M.order) == (1, 4, 8)
    assert P4.haar == pytest.approx(torch.pi / 2) and P4M.haar == pytest.approx(torch.pi)
    assert not P4M.cayley.equal(P4M.cayley.T), "p4m is not abelian"


@pytest.mark.parametrize("group", ALL)
@pytest.mark.parametrize(
    "h_dims, planar, shape",
    [
        ((), True, (2, 3, 5, 5)),  # planar image
        ((2,), True, (2, 3, None, 5, 5)),  # feature map / group filter
        ((2, 4), True, (2, 3, None, 2, None, 5, 5)),  # full-attention maps: two H axes
        ((-1,), False, (3, None)),  # vector on H only
    ],
)
def test_actions_are_homomorphisms(group, h_dims, planar, shape):
    x = torch.randn(*[group.order if s is None else s for s in shape])
    for a, b in itertools.product(range(group.order), repeat=2):
        lhs = group.act(x, group.compose(a, b), h_dims, planar)
        rhs = group.act(group.act(x, b, h_dims, planar), a, h_dims, planar)
        assert torch.equal(lhs, rhs), (a, b)
    assert torch.equal(group.act(x, 0, h_dims, planar), x)


def test_planar_action_is_rot90_then_row_flip():
    x = torch.randn(4, 5, 5)
    assert torch.equal(P4M.act_on_plane(x, 1), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(P4M.act_on_plane(x, 4), torch.flip(x, (-2,)))
    assert torch.equal(P4M.act_on_plane(x, 6), torch.flip(x, (-1,)))  # 180 deg + row flip = column flip
    assert torch.equal(P4M.act_on_plane(x, 5), torch.flip(torch.rot90(x, 1, (-2, -1)), (-2,)))


def test_index_maps_match_the_documented_permutations():
    """docs/method.md#output-permutation-rules: out'[:, :, j] = T(out[:, :, perm[j]])."""
    assert P4.src(1).tolist() == [3, 0, 1, 2]
    assert P4M.src(1).tolist() == [3, 0, 1, 2, 5, 6, 7, 4]  # rot90
    assert P4M.src(4).tolist() == [4, 5, 6, 7, 0, 1, 2, 3]  # flip rows
    assert P4M.src(6).tolist() == [6, 7, 4, 5, 2, 3, 0, 1]  # flip columns
    # the explicit formula: roll the m=+1 half by +k, the m=-1 half by -k, then swap halves if mirrored
    for k, m in itertools.product(range(4), (0, 1)):
        g = 4 * m + k
        for i in range(8):
            a, r = divmod(i, 4)
            b = a if m == 0 else 1 - a
            assert P4M.src(g)[i] == 4 * b + ((r - k) % 4 if b == 0 else (r + k) % 4)


def test_relative_index_is_invariant_and_p4_is_the_cyclic_roll():
    for group in (P4, P4M):
        rel = group.relative
        for g in range(group.order):
            gj = group.cayley[g]  # h_j -> g h_j
            assert torch.equal(rel[gj][:, gj], rel)
    assert P4.relative.tolist() == [[(l - j) % 4 for l in range(4)] for j in range(4)]


@pytest.mark.parametrize("group", ALL)
@pytest.mark.parametrize("lifting", [True, False])
def test_filter_index_equals_stacked_actions(group, lifting):
    n_in, k = (1 if lifting else group.order), 3
    w = torch.randn(2, 3, n_in, k, k)
    index = group.filter_index(n_in, k)
    gathered = w.reshape(2, 3, -1)[:, :, index].view(2, 3, group.order, n_in, k, k)
    for j in range(group.order):
        expected = group.act(w, j, () if lifting else (2,))
        assert torch.equal(gathered[:, :, j], expected)


def test_get_group_errors():
    assert get_group("p4m") is P4M and get_group(P4) is P4
    with pytest.raises(ValueError, match="unknown group 'p8'"):
        get_group("p8")
    with pytest.raises(ValueError, match="not an H axis"):
        P4.act(torch.randn(2, 3, 5, 5, 5), 1, (2,))
