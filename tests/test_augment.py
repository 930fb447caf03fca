"""DSA (spec §3.11, invariants §8.21): shapes, one family per call in 'S' mode, translation bound,
cutout geometry, flip rate, identity resampling, colour formulas, determinism, siamese sharing and
gradients (first and second order)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from padistill.augment import (
    DEFAULT_STRATEGY,
    DSA,
    FAMILIES,
    FAMILY_KEYS,
    AugDraw,
    DSAParams,
    NoAugment,
    round_half_up,
)
from padistill.errors import PadistillError


def gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def shift_reference(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i - dy, j - dx], zero outside: written independently with slicing."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


# ------------------------------------------------------------------------------------------ shapes / API


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape_every_family_size_and_channels(family):
    dsa = DSA(family)
    for size in (32, 64, 8):
        for c in (1, 3):
            x = torch.randn(5, c, size, size, generator=gen(size + c))
            for shared in (False, True):
                out = dsa(x, gen(1), shared=shared)
                assert out.shape == x.shape and out.dtype == x.dtype
                assert torch.isfinite(out).all()
    # Non-square images too.
    x = torch.randn(3, 3, 32, 16, generator=gen(0))
    assert dsa(x, gen(2)).shape == x.shape


def test_mode_m_applies_every_family_in_strategy_order():
    strategy = "flip_crop_color"
    dsa = DSA(strategy, mode="M")
    x = torch.randn(6, 3, 16, 16, generator=gen(0))
    draw = dsa.sample(6, (16, 16), gen(3))
    assert draw.family == ("flip", "crop", "color")
    assert set(draw.values) == {k for f in draw.family for k in FAMILY_KEYS[f]}
    expected = x
    for f in draw.family:
        expected = DSA(f).apply(expected, AugDraw(f, {k: draw.values[k] for k in FAMILY_KEYS[f]}, False))
    torch.testing.assert_close(dsa.apply(x, draw), expected, rtol=0, atol=0)
    full = DSA(mode="M")(torch.randn(2, 3, 32, 32), gen(0))
    assert full.shape == (2, 3, 32, 32)


def test_s_mode_draws_exactly_one_family_uniformly():
    dsa = DSA()
    g = gen(0)
    counts = dict.fromkeys(FAMILIES, 0)
    for _ in range(600):
        draw = dsa.sample(2, (32, 32), g)
        assert isinstance(draw.family, str) and draw.family in FAMILIES
        assert set(draw.values) == set(FAMILY_KEYS[draw.family])  # only that family's parameters
        counts[draw.family] += 1
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 expected each


def test_s_mode_behaviour_flip_keeps_rows_crop_shifts():
    dsa = DSA()
    x = torch.randn(8, 3, 16, 16, generator=gen(0))
    seen = set()
    for seed in range(200):
        draw = dsa.sample(8, (16, 16), gen(seed))
        out = dsa.apply(x, draw)
        if draw.family == "flip":
            # A flip permutes pixels within each row: the multiset of every row is unchanged.
            assert torch.equal(out.sort(dim=-1).values, x.sort(dim=-1).values)
            assert not torch.equal(out, x) or not draw.values["flip"].any()
            seen.add("flip")
        elif draw.family == "crop":
            for i in range(8):
                dy, dx = int(draw.values["shift_y"][i]), int(draw.values["shift_x"][i])
                assert torch.equal(out[i], shift_reference(x[i], dy, dx))
                if (dy, dx) != (0, 0):
                    assert not torch.equal(out[i], x[i])
            seen.add("crop")
        if seen == {"flip", "crop"}:
            break
    assert seen == {"flip", "crop"}


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (8, 8), (32, 16)])
def test_translation_bounded_and_exact(hw):
    h, w = hw
    sy, sx = round_half_up(0.125 * h), round_half_up(0.125 * w)
    assert (sy, sx) == {(32, 32): (4, 4), (64, 64): (8, 8), (8, 8): (1, 1), (32, 16): (4, 2)}[hw]
    n, r0, c0 = 400, h // 2, w // 2
    x = torch.zeros(n, 1, h, w)
    x[:, :, r0, c0] = 1.0
    draw = DSA("crop").sample(n, hw, gen(7))
    out = DSA("crop").apply(x, draw)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(n))  # the pixel stays inside, intact
    pos = out.view(n, h * w).argmax(1)
    dr, dc = pos // w - r0, pos % w - c0
    assert dr.abs().max() <= sy and dc.abs().max() <= sx
    assert torch.equal(dr, draw.values["shift_y"]) and torch.equal(dc, draw.values["shift_x"])
    # Every integer shift in [-s, s] is drawn (uniform integers, bounds inclusive).
    assert set(dr.tolist()) == set(range(-sy, sy + 1)) and set(dc.tolist()) == set(range(-sx, sx + 1))


def test_translation_uncovered_pixels_are_zero():
    x = torch.ones(2, 3, 8, 8)
    draw = AugDraw("crop", {"shift_y": torch.tensor([2, -1]), "shift_x": torch.tensor([-3, 0])}, False)
    out = DSA("crop").apply(x, draw)
    assert out[0, :, :2].eq(0).all() and out[0, :, :, -3:].eq(0).all()
    assert out[0, :, 2:, :5].eq(1).all()
    assert out[1, :, -1:].eq(0).all() and out[1, :, :7].eq(1).all()
    # Shifts beyond the image (hand-built) give zeros rather than an indexing error.
    far = AugDraw("crop", {"shift_y": torch.tensor([20]), "shift_x": torch.tensor([0])}, True)
    assert DSA("crop").apply(x, far).eq(0).all()


@pytest.mark.parametrize("hw", [(32, 32), (64, 64), (8, 8), (32, 16), (7, 7)])
def test_cutout_zeros_a_clipped_square(hw):
    h, w = hw
    ch, cw = round_half_up(0.5 * h), round_half_up(0.5 * w)
    n = 500
    x = torch.ones(n, 2, h, w)
    draw = DSA("cutout").sample(n, hw, gen(11))
    out = DSA("cutout").apply(x, draw)
    assert torch.equal(out[:, 0], out[:, 1])  # same region in every channel
    zero = out[:, 0] == 0
    rows, cols = zero.any(2), zero.any(1)  # [n, H], [n, W]
    # The zeroed set is exactly a rectangle (outer product of its row and column extents) ...
    assert torch.equal(zero, rows.unsqueeze(2) & cols.unsqueeze(1))
    # ... whose rows / cols are contiguous and equal to [centre - side//2, centre - side//2 + side) clipped.
    ar, ac = torch.arange(h), torch.arange(w)
    top = draw.values["cutout_y"].view(-1, 1) - ch // 2
    left = draw.values["cutout_x"].view(-1, 1) - cw // 2
    assert torch.equal(rows, (ar >= top) & (ar < top + ch))
    assert torch.equal(cols, (ac >= left) & (ac < left + cw))
    heights, widths = rows.sum(1), cols.sum(1)
    assert heights.max() == ch and widths.max() == cw  # a full square away from the borders
    assert heights.min() < ch and widths.min() < cw  # clipped near the borders
    # Clipping is symmetric: at the first and the last centre, (side + 1) // 2 rows / cols remain.
    cy, cx = draw.values["cutout_y"], draw.values["cutout_x"]
    assert cy.min() == 0 and cy.max() == h - ch % 2 and cx.min() == 0 and cx.max() == w - cw % 2
    for centre, extent, side in ((cy, heights, ch), (cx, widths, cw)):
        assert extent[centre == 0].eq((side + 1) // 2).all()
        assert extent[centre == centre.max()].eq((side + 1) // 2).all()
    assert out[~zero.unsqueeze(1).expand_as(out)].eq(1).all()  # everything else untouched


def test_flip_probability_and_content():
    n = 4000
    x = torch.randn(n, 1, 4, 6, generator=gen(0))
    draw = DSA("flip").sample(n, (4, 6), gen(5))
    flip = draw.values["flip"]
    assert flip.dtype == torch.bool
    assert 0.47 < flip.float().mean().item() < 0.53
    out = DSA("flip").apply(x, draw)
    assert torch.equal(out[flip], x[flip].flip(-1))
    assert torch.equal(out[~flip], x[~flip])


def test_scale_and_rotate_identity_parameters_return_input():
    # Image-range data: the float32 grid of affine_grid is off by ~1 ulp of the pixel coordinate, so
    # the identity resample is exact only up to ~1e-6 x (difference between neighbouring pixels).
    x = torch.rand(4, 3, 32, 32, generator=gen(0))
    ones = torch.ones(4)
    scale = AugDraw("scale", {"scale_x": ones, "scale_y": ones}, False)
    rot = AugDraw("rotate", {"angle": torch.zeros(4)}, False)
    torch.testing.assert_close(DSA("scale").apply(x, scale), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(DSA("rotate").apply(x, rot), x, rtol=0, atol=1e-5)
    # The sampler is a real rotation: 90 degrees on a square image is a quarter turn (clockwise here).
    r90 = AugDraw("rotate", {"angle": torch.full((1,), 90.0)}, True)
    torch.testing.assert_close(DSA("rotate").apply(x, r90), torch.rot90(x, -1, (2, 3)), rtol=0, atol=1e-4)


def test_sampled_parameter_ranges():
    n = 5000
    g = gen(3)
    v = DSA("scale").sample(n, (32, 32), g).values
    for k in ("scale_x", "scale_y"):
        assert v[k].min() >= 1 / 1.2 and v[k].max() <= 1.2 and v[k].max() > 1.19 and v[k].min() < 0.84
    assert not torch.equal(v["scale_x"], v["scale_y"])  # independent x / y factors
    a = DSA("rotate").sample(n, (32, 32), g).values["angle"]
    assert a.min() >= -15 and a.max() <= 15 and a.min() < -14.9 and a.max() > 14.9
    c = DSA("color").sample(n, (32, 32), g).values
    assert c["brightness"].min() >= -0.5 and c["brightness"].max() < 0.5
    assert c["saturation"].min() >= 0 and c["saturation"].max() < 2
    assert c["contrast"].min() >= 0.5 and c["contrast"].max() < 1.5
    # Tunables are honoured.
    p = DSAParams(rotate=5.0, scale=1.5)
    assert DSA("rotate", params=p).sample(n, (8, 8), g).values["angle"].abs().max() <= 5
    assert DSA("scale", params=p).sample(n, (8, 8), g).values["scale_x"].max() > 1.45


# ------------------------------------------------------------------------------------------ colour


def test_color_follows_formulas_hand_computed():
    x = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]],
                       [[1.0, 1.0], [0.0, 3.0]],
                       [[-2.0, 0.5], [1.0, 0.0]]]])  # [1, 3, 2, 2]
    b, s, c = 0.2, 1.5, 0.8
    draw = AugDraw("color", {"brightness": torch.tensor([b]), "saturation": torch.tensor([s]),
                             "contrast": torch.tensor([c])}, False)
    out = DSA("color").apply(x, draw)
    # Reference by hand, pixel by pixel.
    vals = x[0].tolist()  # [C][H][W]
    y = [[[vals[k][i][j] + b for j in range(2)] for i in range(2)] for k in range(3)]
    for i in range(2):
        for j in range(2):
            m = sum(y[k][i][j] for k in range(3)) / 3
            for k in range(3):
                y[k][i][j] = (y[k][i][j] - m) * s + m
    m = sum(y[k][i][j] for k in range(3) for i in range(2) for j in range(2)) / 12
    y = [[[(y[k][i][j] - m) * c + m for j in range(2)] for i in range(2)] for k in range(3)]
    torch.testing.assert_close(out, torch.tensor([y]), rtol=0, atol=1e-6)
    # Sampled draws map u ~ U[0,1) through the formulas (brightness 1.0, saturation 2.0, contrast 0.5):
    # replay the generator (the 'S' family choice consumes one randint first, then one u per step).
    d = DSA("color").sample(1, (2, 2), gen(9))
    g = gen(9)
    torch.randint(1, (1,), generator=g)
    u = torch.cat([torch.rand(1, generator=g) for _ in range(3)])
    assert torch.allclose(d.values["brightness"], u[0:1] - 0.5)
    assert torch.allclose(d.values["saturation"], u[1:2] * 2.0)
    assert torch.allclose(d.values["contrast"], u[2:3] + 0.5)


def test_no_clamping_in_model_space():
    x = torch.full((2, 3, 8, 8), 5.0)  # far outside [0, 1], e.g. ZCA space
    draw = AugDraw("color", {"brightness": torch.tensor([0.4]), "saturation": torch.tensor([1.0]),
                             "contrast": torch.tensor([1.0])}, True)
    assert torch.allclose(DSA("color").apply(x, draw), torch.full_like(x, 5.4))


# ------------------------------------------------------------------------------------------ randomness


@pytest.mark.parametrize("mode", ["S", "M"])
def test_seeded_calls_are_deterministic_and_seeds_differ(mode):
    dsa = DSA(mode=mode)
    x = torch.randn(16, 3, 32, 32, generator=gen(0))
    for seed in range(12):
        a, b = dsa(x, gen(seed)), dsa(x, gen(seed))
        assert torch.equal(a, b)
        assert not torch.equal(a, dsa(x, gen(seed + 1000)))
    assert torch.equal(dsa(x, gen(4), shared=True), dsa(x, gen(4), shared=True))


def test_global_rng_untouched():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    DSA(mode="M")(torch.randn(4, 3, 8, 8, generator=gen(1)), gen(2))
    assert torch.equal(state, torch.get_rng_state())


def test_draw_take_and_to():
    dsa = DSA(mode="M")
    x = torch.randn(10, 3, 16, 16, generator=gen(0))
    draw = dsa.sample(10, (16, 16), gen(1))
    full = dsa.apply(x, draw)
    torch.testing.assert_close(dsa.apply(x[3:7], draw.take(3, 7)), full[3:7], rtol=0, atol=1e-6)
    moved = draw.to("cpu")
    assert all(v.device.type == "cpu" for v in moved.values.values()) and moved.family == draw.family
    shared = dsa.sample(10, (16, 16), gen(1), shared=True)
    assert shared.take(3, 7) is shared


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_seed_same_result_on_cpu_and_gpu():
    dsa = DSA(mode="M")
    x = torch.randn(8, 3, 32, 32, generator=gen(0))
    cpu = dsa(x, gen(5))
    gpu = dsa(x.cuda(), gen(5))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ siamese


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_draw_applies_identically_to_batches_of_any_size(family):
    dsa = DSA(family)
    draw = dsa.sample(256, (16, 16), gen(3), shared=True)
    assert draw.shared and all(v.shape[0] == 1 for v in draw.values.values())
    real = torch.randn(8, 3, 16, 16, generator=gen(0))
    syn = real[:3].clone()
    out_real, out_syn = dsa.apply(real, draw), dsa.apply(syn, draw)
    torch.testing.assert_close(out_syn, out_real[:3], rtol=0, atol=1e-6)
    # Every sample gets the same transform: identical inputs give identical outputs.
    same = real[:1].expand(5, -1, -1, -1)
    out = dsa.apply(same, draw)
    assert torch.equal(out, out[:1].expand_as(out))


def test_non_shared_draw_must_match_batch():
    dsa = DSA()
    draw = dsa.sample(8, (16, 16), gen(0))
    with pytest.raises(PadistillError, match="8 images"):
        dsa.apply(torch.randn(3, 3, 16, 16), draw)


# ------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_flow_first_and_second_order(family):
    dsa = DSA(family)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=gen(0)).requires_grad_()
    draw = dsa.sample(4, (12, 12), gen(2))
    w = torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=gen(1))
    (grad,) = torch.autograd.grad((dsa.apply(x, draw) * w).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Double backward: every family is affine in x, A(x) = Lx + b, so for f = |A(x)|^2 the
    # Hessian-vector product is 2 L^T L w = 2 vjp_A(A(w) - A(0)).
    (g,) = torch.autograd.grad(dsa.apply(x, draw).pow(2).sum(), x, create_graph=True)
    (hvp,) = torch.autograd.grad((g * w).sum(), x)
    lw = dsa.apply(w, draw) - dsa.apply(torch.zeros_like(w), draw)
    (expected,) = torch.autograd.grad((dsa.apply(x, draw) * lw).sum(), x)
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0
    torch.testing.assert_close(hvp, 2 * expected)
    # Numerical checks of both orders on a small input.
    xs = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=gen(4)).requires_grad_()
    d = dsa.sample(2, (6, 6), gen(5))
    assert torch.autograd.gradcheck(lambda t: dsa.apply(t, d), (xs,))
    assert torch.autograd.gradgradcheck(lambda t: dsa.apply(t, d), (xs,))


# ------------------------------------------------------------------------------------------ errors / identity


@pytest.mark.parametrize("strategy, match", [
    ("color_blur", "'blur'"), ("", "NoAugment"), ("crop__flip", "''"), ("flip_flip", "repeated"),
    (None, "None"),
])
def test_bad_strategy(strategy, match):
    with pytest.raises(PadistillError, match=match):
        DSA(strategy)


def test_bad_mode_params_inputs():
    with pytest.raises(PadistillError, match="'X'"):
        DSA(mode="X")
    with pytest.raises(PadistillError, match="crop"):
        DSA(params=DSAParams(crop=2.0))
    with pytest.raises(PadistillError, match="scale"):
        DSA(params=DSAParams(scale=0.5))
    dsa = DSA()
    with pytest.raises(PadistillError, match="N, C, H, W"):
        dsa(torch.randn(3, 8, 8), gen(0))
    with pytest.raises(PadistillError, match="Generator"):
        dsa(torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(PadistillError, match="unknown family 'blur'"):
        dsa.apply(torch.randn(1, 3, 8, 8), AugDraw("blur", {}, True))
    with pytest.raises(PadistillError, match="lacks"):
        dsa.apply(torch.randn(1, 3, 8, 8), AugDraw("scale", {"scale_x": torch.ones(1)}, True))
    with pytest.raises(PadistillError, match="image_size"):
        dsa.sample(2, (0, 8), gen(0))


def test_no_augment_is_identity_and_draws_nothing():
    aug = NoAugment()
    x = torch.randn(3, 3, 8, 8)
    g = gen(0)
    state = g.get_state()
    draw = aug.sample(3, (8, 8), g)
    assert draw.family == () and draw.values == {}
    assert aug.apply(x, draw) is x and aug(x, g) is x
    assert torch.equal(state, g.get_state())
    # DSA.apply also accepts an empty draw (identity).
    assert torch.equal(DSA().apply(x, draw), x)


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 5), c=st.sampled_from([1, 3]), h=st.integers(2, 40), w=st.integers(2, 40),
       seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["S", "M"]), shared=st.booleans())
def test_property_finite_shape_and_translation_bound(n, c, h, w, seed, mode, shared):
    dsa = DSA(DEFAULT_STRATEGY, mode=mode)
    x = torch.randn(n, c, h, w, generator=gen(seed ^ 1))
    draw = dsa.sample(n, (h, w), gen(seed), shared=shared)
    out = dsa.apply(x, draw)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if "shift_y" in draw.values:
        assert draw.values["shift_y"].abs().max() <= round_half_up(0.125 * h)
        assert draw.values["shift_x"].abs().max() <= round_half_up(0.125 * w)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_property_single_pixel_moves_at_most_s(h, w, seed, data):
    r0, c0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    x = torch.zeros(16, 1, h, w)
    x[:, :, r0, c0] = 1.0
    draw = DSA("crop").sample(16, (h, w), gen(seed))
    out = DSA("crop").apply(x, draw)
    sy, sx = round_half_up(0.125 * h), round_half_up(0.125 * w)
    nz = out.nonzero()
    assert out.sum() == len(nz)  # values are only moved, never blended
    assert ((nz[:, 2] - r0).abs() <= sy).all() and ((nz[:, 3] - c0).abs() <= sx).all()
    for i in range(16):
        r, cc = r0 + int(draw.values["shift_y"][i]), c0 + int(draw.values["shift_x"][i])
        inside = 0 <= r < h and 0 <= cc < w
        assert out[i].sum() == (1.0 if inside else 0.0)
        if inside:
            assert out[i, 0, r, cc] == 1.0
