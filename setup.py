"""Build and install llm2vec-fast.

The folders ``kernels/`` and ``training/`` install as the subpackages
``llm2vec_fast.kernels`` and ``llm2vec_fast.training`` (package_dir mapping),
and ``csrc/`` builds the pybind11 extension ``llm2vec_fast._C``. The extension
links no libtorch, so building it needs only a C++17 compiler and pybind11.
"""

from __future__ import annotations

import re
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

# folder on disk -> installed package name
PACKAGE_ROOTS = {
    "llm2vec_fast": "llm2vec_fast",
    "kernels": "llm2vec_fast.kernels",
    "training": "llm2vec_fast.training",
}


def read_version() -> str:
    """The version from llm2vec_fast/version.py, read without importing the package."""
    text = (ROOT / "llm2vec_fast" / "version.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no __version__ in llm2vec_fast/version.py")
    return match.group(1)


def discover_packages() -> tuple[list[str], dict[str, str]]:
    """Each mapped folder and its subpackages, under their installed names."""
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder, name in PACKAGE_ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        packages += [f"{name}.{sub}" for sub in find_packages(where=str(ROOT / folder))]
    return packages, package_dir


packages, package_dir = discover_packages()
if "llm2vec_fast.integrations" not in packages:
    packages.append("llm2vec_fast.integrations")

test_requires = [
    "pytest",
    "pytest-benchmark",
    "pytest-timeout",
    "hypothesis",
    "gensim",
    "triton",
    "pyarrow",
    "ray[data]",
    "import-linter",  # the layer contract in .importlinter (lint-imports)
]

setup(
    name="llm2vec-fast",
    version=read_version(),
    description="A fast, padding-free re-implementation of the llm2vec text-embedding library",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8")
    if (ROOT / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"llm2vec_fast": ["data/*"]},
    include_package_data=False,
    # lower bounds: the oldest versions the test suite was run against (README, "Supported
    # versions"); no upper bounds, so CI meets a new release before users do
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17",
        "tokenizers>=0.23.1",
        "safetensors>=0.8",
        "numpy>=2.0",
        "tqdm",
        "gguf>=0.16",
        "accelerate>=1.10",
        "peft>=0.18",
    ],
    extras_require={
        "gpu": ["triton>=3.1"],
        # integrations (llm2vec_fast.integrations), tested with mteb 2.26 and
        # sentence-transformers 6.2; mteb brings sentence-transformers with it
        "mteb": ["mteb>=2.26"],
        "st": ["sentence-transformers>=6.0"],
        # Parquet input and output of the batch job (llm2vec-fast embed)
        "parquet": ["pyarrow>=14"],
        # the batch job on a Ray cluster (llm2vec_fast.integrations.ray)
        "ray": ["ray[data]>=2.9", "pyarrow>=14"],
        "test": test_requires,
        "dev": [*test_requires, "ruff"],
    },
    entry_points={"console_scripts": ["llm2vec-fast = llm2vec_fast.cli:main"]},
    ext_modules=[
        Pybind11Extension(
            "llm2vec_fast._C",
            [
                "csrc/packer.cpp",
                "csrc/bindings.cpp",
                # the tokenizer, one file per HF tokenizers stage (bpe_tokenizer.h)
                "csrc/added_vocabulary.cpp",
                "csrc/normalizer.cpp",
                "csrc/pre_tokenizer.cpp",
                "csrc/bpe_model.cpp",
                "csrc/bpe_tokenizer.cpp",
                "csrc/tokenizer_batch.cpp",
                "csrc/tokenizer_bindings.cpp",
            ],
            include_dirs=["csrc"],
            depends=[
                "csrc/packer.h",
                "csrc/added_vocabulary.h",
                "csrc/bpe_model.h",
                "csrc/bpe_tokenizer.h",
                "csrc/hash_tables.h",
                "csrc/normalizer.h",
                "csrc/post_processor.h",
                "csrc/pre_tokenizer.h",
                "csrc/text.h",
                "csrc/tokenizer_impl.h",
                "csrc/tokenizer_spec.h",
                "csrc/unicode_tables.h",
            ],
            cxx_std=17,
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],  # the tokenizer's std::thread workers
        )
    ],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
