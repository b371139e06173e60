"""The library versions a run was made with (recorded by training, printed on the model card)."""

from __future__ import annotations

__version__ = "0.1.0"  # MedQA's own version (`medqa.__version__`)
PACKAGES = ("medqa", "torch", "transformers", "peft", "huggingface_hub")


def library_versions() -> dict[str, str]:
    """Installed versions of MedQA's main libraries, plus the HIP or CUDA version torch was built for."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import torch

        if getattr(torch.version, "hip", None):
            out["hip"] = torch.version.hip
        elif torch.version.cuda:
            out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out
