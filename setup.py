from setuptools import find_packages, setup

setup(
    name="pyro_ssvi",
    version="0.1.0",
    description="Sparse Subspace Variational Inference (SSVI) for Bayesian neural networks in Pyro",
    packages=find_packages(include=["pyro_ssvi", "pyro_ssvi.*"]),
    package_data={"pyro_ssvi": ["conf/*.yaml", "conf/*/*.yaml"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "pyro-ppl>=1.9,<2",
        "numpy>=1.22",
        "hydra-core>=1.3,<1.4",
        "scikit-learn>=1.0",  # digits data set for the default run and tests
        "tqdm>=4.60",  # progress bars
        "matplotlib>=3.5",  # learning curves, reliability diagrams
        "uncertainty-calibration>=0.1.4",  # the paper's calibration error
        "safetensors>=0.4",  # the compact posterior file (pyro_ssvi.export)
    ],
    extras_require={
        "parquet": ["pyarrow>=12"],  # data=table with a .parquet file
        "test": ["pytest>=7", "pyarrow>=12", "scoringrules>=0.7; python_version >= '3.11'"],
    },
)
