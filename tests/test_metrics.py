"""metrics.py against independent references: the Fréchet distance against SciPy's matrix
square root, SSIM against a NumPy/SciPy transcription of its definition."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from phenaki_jax import metrics


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_frechet(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root)))


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipys_matrix_square_root(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-7, abs=1e-9)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # Moving one mean by a vector adds its squared length.
    shift = rng.standard_normal(d)
    assert metrics.frechet_distance(mu1 + shift, s1, mu1, s1) == pytest.approx(
        float(shift @ shift), rel=1e-7)


def test_gaussian_stats_are_numpys():
    f = np.random.default_rng(0).standard_normal((50, 7))
    mu, cov = metrics.gaussian_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(cov, np.cov(f.T))


def _reference_ssim(x, y):
    """SSIM of two [H, W, C] images, transcribed from Wang et al. (2004) with tf.image.ssim's
    choices: 11x11 Gaussian window (sigma 1.5), no padding, mean over positions and channels."""
    t = np.arange(11) - 5.0
    g = np.exp(-0.5 * (t / 1.5) ** 2)
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda v: scipy.signal.convolve2d(v, window, mode="valid")  # noqa: E731
        ma, mb = f(a), f(b)
        saa, sbb, sab = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
        out.append(((2 * ma * mb + c1) * (2 * sab + c2))
                   / ((ma ** 2 + mb ** 2 + c1) * (saa + sbb + c2)))
    return float(np.mean(out))


def test_ssim_matches_its_definition_and_falls_with_noise():
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 256, (2, 3, 32, 40, 3)).astype(np.uint8)
    noisy = {s: np.clip(clean + rng.normal(0, s, clean.shape), 0, 255).astype(np.uint8)
             for s in (5, 20, 60)}
    ours = np.asarray(metrics.ssim_per_frame(jnp.asarray(noisy[20]), jnp.asarray(clean)))
    assert ours.shape == (2, 3)
    for i in range(2):
        for t in range(3):
            assert ours[i, t] == pytest.approx(_reference_ssim(noisy[20][i, t], clean[i, t]),
                                               abs=1e-4)
    same = np.asarray(metrics.ssim_per_frame(jnp.asarray(clean), jnp.asarray(clean)))
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    means = [float(np.mean(metrics.ssim_per_frame(jnp.asarray(noisy[s]), jnp.asarray(clean))))
             for s in (5, 20, 60)]
    assert 1 > means[0] > means[1] > means[2] > 0
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim_per_frame(jnp.zeros((1, 1, 8, 8, 3)), jnp.zeros((1, 1, 8, 8, 3)))
