"""Torus jump graphs of the DTM: degree, proper 2-colouring, wrap-around, packing, size errors."""

import numpy as np
import pytest
import torch

from genflow.errors import ConfigError
from genflow.ising.graph import JUMP_SETS, PRESETS, TorusGraph, parse_preset, smallest_preset_for


def neighbours(graph: TorusGraph) -> list[set[int]]:
    out = [set() for _ in range(graph.num_nodes)]
    for a, b in graph.edges:
        out[a].add(int(b))
        out[b].add(int(a))
    return out


@pytest.mark.parametrize("preset", ["20_8", "44_12", "60_12", "100_40", "120_36"])
def test_every_node_has_the_preset_degree_and_no_edge_repeats(preset):
    graph = TorusGraph.from_preset(preset)
    side, degree = parse_preset(preset)
    assert graph.degree == degree == 4 * len(JUMP_SETS[degree])
    edges = graph.edges
    assert len(edges) == side * side * degree // 2
    assert len({tuple(sorted(e)) for e in edges.tolist()}) == len(edges)  # each undirected edge once
    assert all(len(n) == degree for n in neighbours(graph))


@pytest.mark.parametrize("preset", PRESETS)
def test_chessboard_colouring_is_proper(preset):
    graph = TorusGraph.from_preset(preset)
    side = graph.side
    colour = lambda i: (i // side + i % side) % 2  # noqa: E731
    edges = graph.edges
    assert all(colour(a) == 0 and colour(b) == 1 for a, b in edges.tolist())


def test_torus_wraps_around_the_edges():
    graph = TorusGraph(20, 8)
    n = neighbours(graph)
    corner = 0  # (0, 0): its nearest neighbours above and to the left wrap to the far side
    assert {19 * 20 + 0, 0 * 20 + 19, 1, 20} <= n[corner]
    # jump (4, 1) rotated: (-1, 4) from (0, 0) lands on row 19, column 4
    assert 19 * 20 + 4 in n[corner]


def test_packing_round_trips_and_colours_are_halves():
    graph = TorusGraph(20, 8)
    grid = torch.arange(400.0)
    c0, c1 = graph.from_grid(grid)
    assert c0.shape == c1.shape == (2, 10, 10)
    assert torch.equal(graph.to_grid(c0, c1), grid)
    rows, cols = c0 // 20, c0 % 20
    assert torch.all((rows + cols) % 2 == 0) and torch.all((c1 // 20 + c1 % 20) % 2 == 1)


def test_colour_one_weights_see_the_same_edges():
    graph = TorusGraph(20, 8)
    weight = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    J = graph.dense_couplings(weight)
    w1 = graph.colour_one_weights(weight)
    index1 = torch.as_tensor(graph.grid_index[1])
    for q in range(2):
        for o, term in enumerate(graph.stencil[1][q]):
            source = torch.as_tensor(graph.grid_index[0][term.source])
            neighbour = torch.roll(source, shifts=(-term.di, -term.dj), dims=(0, 1))
            assert torch.equal(w1[q, o], J[index1[q].flatten(), neighbour.flatten()].view(10, 10))


def test_reference_integer_preset_names_are_read():
    assert parse_preset(8012) == (80, 12)
    assert parse_preset("208") == (20, 8)
    assert parse_preset(12036) == (120, 36)
    assert parse_preset("70_12") == (70, 12)


def test_unknown_degree_and_bad_names_are_clear_errors():
    with pytest.raises(ConfigError, match="no jump set of degree 13"):
        parse_preset("80_13")
    with pytest.raises(ConfigError, match="SIDE_DEGREE"):
        parse_preset("big")
    with pytest.raises(ConfigError, match="even"):
        TorusGraph(21, 8)


def test_too_small_graph_names_the_smallest_preset_that_fits():
    graph = TorusGraph.from_preset("44_12")
    with pytest.raises(ConfigError, match=r"44_12 is too small for 1000 visible nodes.*smallest preset that fits is 50_12"):
        graph.place_visible(1000, seed=0)
    assert smallest_preset_for(3073) == "80_12"  # LunarLander: 3072 pixels + 1 label node
    with pytest.raises(ConfigError, match="no named preset fits"):
        graph.place_visible(8000, seed=0)


def test_visible_nodes_are_a_seeded_random_choice_of_colour_zero_sites():
    graph = TorusGraph.from_preset("44_12")
    a, b, c = graph.place_visible(794, 1), graph.place_visible(794, 1), graph.place_visible(794, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 794 and int(a.max()) < graph.sites_per_colour
    assert not np.array_equal(np.sort(a.numpy()), np.arange(794))  # not just the first sites


def test_image_placement_keeps_neighbouring_pixels_close_on_the_torus():
    graph = TorusGraph.from_preset("44_12")
    sites = graph.place_image((28, 28), 1, 100, seed=0)
    assert len(set(sites.tolist())) == 884 and int(sites.max()) < graph.sites_per_colour
    grid = graph.grid_index[0].reshape(-1)[sites[:784].numpy()]
    rows, cols = (grid // 44).reshape(28, 28), (grid % 44).reshape(28, 28)

    def torus_gap(a):
        gap = np.abs(np.diff(a, axis=1))
        return np.minimum(gap, 44 - gap)

    # right-hand neighbours: ~1.57 sites apart (44 / 28) along the row, on (almost) the same row
    assert np.mean(torus_gap(cols) <= 2) > 0.95 and np.mean(torus_gap(rows) <= 1) > 0.95
    random = graph.place_visible(884, seed=0)
    random_grid = graph.grid_index[0].reshape(-1)[random[:784].numpy()]
    assert np.mean(torus_gap((random_grid % 44).reshape(28, 28)) <= 2) < 0.3  # the reference's placement is not local
    assert torch.equal(sites, graph.place_image((28, 28), 1, 100, seed=0))
    assert not torch.equal(sites[784:], graph.place_image((28, 28), 1, 100, seed=1)[784:])  # labels: seeded random
    with pytest.raises(ConfigError, match="too small"):
        graph.place_image((28, 28), 2, 10, seed=0)


def _shares_a_latent(graph, sites, shape=(28, 28)):
    """Fraction of horizontally adjacent pixels whose nodes have a common neighbour on the graph."""
    neighbours: dict[int, set[int]] = {}
    for a, b in graph.edges:
        neighbours.setdefault(int(a), set()).add(int(b))
    grid = graph.grid_index[0].reshape(-1)[sites[: shape[0] * shape[1]].numpy()].reshape(shape)
    return np.mean([bool(neighbours[grid[r, c]] & neighbours[grid[r, c + 1]]) for r in range(shape[0]) for c in range(shape[1] - 1)])


def test_reference_placement_hands_random_sites_to_pixels_in_grid_order():
    graph = TorusGraph.from_preset("44_12")
    sites = graph.place_reference(784, 100, seed=3)
    assert len(set(sites.tolist())) == 884 and torch.equal(sites, graph.place_reference(784, 100, seed=3))
    grid = graph.grid_index[0].reshape(-1)[sites.numpy()]
    assert np.all(np.diff(grid[:784]) > 0)  # image nodes first, in grid order (labels: a Python set's order)
    assert int(grid.max()) < int(np.sort(graph.grid_index[0].reshape(-1))[-1])  # the last colour-0 site is never drawn
    # what the raster order buys: neighbouring pixels share latents as with the image layout, unlike a random layout
    assert _shares_a_latent(graph, sites) > 0.85
    assert _shares_a_latent(graph, graph.place_visible(884, seed=3)) < 0.2
    assert not torch.equal(sites, graph.place_reference(784, 100, seed=4))


@pytest.mark.parametrize("preset, second_jump, last_jump", [
    ("70_24", (4, 1), (3, 28)), ("80_24", (6, 1), (3, 28)), ("60_32", (4, 1), (20, 35)), ("80_48", (6, 1), (2, 9)),
    ("100_76", (6, 1), (23, 34))])
def test_presets_of_the_reference_figures_have_its_jump_sets(preset, second_jump, last_jump):
    graph = TorusGraph.from_preset(preset)
    assert graph.jumps[1] == second_jump and graph.jumps[-1] == last_jump and 4 * len(graph.jumps) == graph.degree
    assert len(graph.edges) == graph.num_nodes * graph.degree // 2
