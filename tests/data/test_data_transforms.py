"""Preprocessing: ZCA invariants (spec §8.22), normalize/none, persistence and the fitted-transform cache."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import padistill.data.transforms as tr
from padistill.data import Dataset, Preprocessor, fit_preprocessor, load_preprocessor
from padistill.data.transforms import cached_preprocessor
from padistill.errors import PadistillError

EPS = 0.1


def _structured(n=500, shape=(3, 8, 8), seed=0) -> torch.Tensor:
    """Correlated images: a few smooth latent factors plus noise, squashed into uint8."""
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor(shape).prod().item()
    basis = torch.randn(6, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) @ basis * 0.3
    x = x + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (torch.sigmoid(x) * 255).round().to(torch.uint8).reshape(n, *shape)


@pytest.fixture(scope="module")
def data():
    return _structured()


@pytest.fixture(scope="module")
def zca(data):
    return fit_preprocessor("zca", data, eps=EPS)


def _cov(flat: torch.Tensor) -> torch.Tensor:
    c = flat - flat.mean(0, keepdim=True)
    return c.T @ c / (len(flat) - 1)


def test_zca_whitened_mean_and_covariance(data, zca):
    x = data.double().reshape(len(data), -1) / 255
    s, u = torch.linalg.eigh(_cov(x))
    s = s.clamp_min(0)
    z = zca.pre(data).double().reshape(len(data), -1)
    assert z.mean(0).abs().max() < 1e-4
    want = u @ torch.diag(s / (s + EPS)) @ u.T
    assert torch.allclose(_cov(z), want, atol=2e-4)
    assert (_cov(z) - torch.eye(x.shape[1], dtype=torch.float64)).abs().max() > 0.5  # not plain whitening


def test_zca_matches_kornia_and_inverts(data, zca):
    from kornia.enhance import ZCAWhitening

    xf = data.float() / 255
    ref = ZCAWhitening(eps=EPS, compute_inv=True).fit(xf)
    assert torch.allclose(zca.pre(data), ref(xf), atol=1e-6)
    assert torch.allclose(zca.inverse(zca.pre(data)), xf, atol=2e-5)
    assert torch.equal(zca.pre(data), zca.pre(xf))  # uint8 and [0, 1] float inputs mean the same


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 20), as_float=st.booleans())
def test_zca_inverse_of_pre_is_identity(zca, seed, n, as_float):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    xin = x.float() / 255 if as_float else x
    back = zca.inverse(zca.pre(xin))
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert torch.allclose(back, x.float() / 255, atol=5e-5)
    assert torch.equal(Preprocessor.to_uint8(back), x)


def test_chunking_gives_same_result(data, zca, monkeypatch):
    full = zca.pre(data)
    monkeypatch.setattr(tr, "_CHUNK", 7)
    assert torch.allclose(zca.pre(data), full, atol=1e-6)
    xg = (data[:10].float() / 255).requires_grad_(True)
    zca.pre(xg).sum().backward()  # differentiable path keeps the graph
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_normalize_and_none(data):
    norm = fit_preprocessor("normalize", data)
    z = norm.pre(data)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert torch.allclose(norm.inverse(z), data.float() / 255, atol=1e-6)
    fixed = fit_preprocessor("normalize", data, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert torch.allclose(fixed.pre(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))[0, :, 0, 0],
                          torch.tensor([2.0, 1.0, 0.5]))
    none = fit_preprocessor("none", data)
    assert torch.equal(none.pre(data), data.float() / 255)
    assert torch.equal(Preprocessor.to_uint8(torch.tensor([-0.2, 0.5, 1.7])), torch.tensor([0, 128, 255],
                                                                                          dtype=torch.uint8))


def test_bad_calls(data, zca):
    with pytest.raises(PadistillError, match="kind must be one of zca, normalize, none"):
        fit_preprocessor("pca", data)
    with pytest.raises(PadistillError, match=r"expected images \[N, 3, 8, 8\], found \[2, 3, 4, 4\]"):
        zca.pre(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(PadistillError, match="needs 3 mean values and 3 positive std"):
        fit_preprocessor("normalize", data, mean=(0.5,), std=(0.2,))
    with pytest.raises(PadistillError, match="zca needs at least 2"):
        fit_preprocessor("zca", data[:1])


@pytest.mark.parametrize("kind", ["zca", "normalize", "none"])
def test_save_load_round_trip(tmp_path, data, kind):
    pre = fit_preprocessor(kind, data, eps=EPS, dataset_fingerprint="abc")
    path = pre.save(tmp_path / f"{kind}.pt")
    state = torch.load(path, weights_only=True)  # plain tensors, strings and numbers only
    assert state["kind"] == kind and state["image_shape"] == [3, 8, 8]
    assert state["dataset_fingerprint"] == "abc"
    back = load_preprocessor(path)
    assert torch.equal(back.pre(data), pre.pre(data))
    assert torch.equal(back.inverse(pre.pre(data)), pre.inverse(pre.pre(data)))
    assert back.fingerprint() == pre.fingerprint() and len(pre.fingerprint()) == 64


def test_load_rejects_bad_states(tmp_path, zca):
    good = zca.state_dict()
    cases = [
        (dict(kind="pca"), "field 'kind' must be one of"),
        (dict(image_shape=[3, 8]), "field 'image_shape' must be 3 positive integers"),
        (dict(transform=good["transform"][:10]), r"field 'transform': expected shape \[192, 192\]"),
        (dict(mean=good["mean"].double()), "field 'mean': expected dtype float32"),
        (dict(format="other"), "field 'format' must be"),
        (dict(extra=1), "unexpected key"),
        (dict(std=torch.ones(3)), "field 'std' must be None for kind 'zca'"),
    ]
    for change, pattern in cases:
        bad = {**good, **change}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(PadistillError, match=pattern):
            load_preprocessor(tmp_path / "bad.pt")
    nan = {**good, "transform_inv": good["transform_inv"].clone().fill_(float("nan"))}
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(PadistillError, match="contains NaN or inf"):
        load_preprocessor(tmp_path / "nan.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(PadistillError, match="cannot read preprocessor file"):
        load_preprocessor(tmp_path / "junk.pt")


def test_cached_preprocessor(tmp_path, data, monkeypatch):
    labels = torch.arange(len(data)) % 2
    ds = Dataset("toy", data, labels, data[:5], labels[:5], ["a", "b"], (0.5,) * 3, (0.2,) * 3)
    monkeypatch.setattr(tr, "_MEMORY", {})
    first = cached_preprocessor(ds, "zca", EPS, tmp_path)
    path = tmp_path / f"{ds.fingerprint()}-zca-0.1.pt"
    assert path.is_file() and first.dataset_fingerprint == ds.fingerprint()
    assert cached_preprocessor(ds, "zca", EPS, tmp_path) is first  # in-process cache

    def no_fit(*a, **k):
        raise AssertionError("refitted although a valid cache file exists")

    monkeypatch.setattr(tr, "_MEMORY", {})
    monkeypatch.setattr(tr, "fit_preprocessor", no_fit)
    again = cached_preprocessor(ds, "zca", EPS, tmp_path)
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.undo()
    monkeypatch.setattr(tr, "_MEMORY", {})
    path.write_bytes(b"corrupt")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        refit = cached_preprocessor(ds, "zca", EPS, tmp_path)
    assert any("refitting" in str(m.message) for m in w)
    assert torch.equal(refit.pre(data), first.pre(data))
    norm = cached_preprocessor(ds, "normalize", EPS, tmp_path)
    assert norm.mean.tolist() == pytest.approx([0.5] * 3)  # normalize uses the dataset's constants
