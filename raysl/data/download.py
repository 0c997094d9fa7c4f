"""Downloads with torchvision (only when `data.download: true`); reading is raysl's own."""

from __future__ import annotations

from pathlib import Path

from raysl.data.base import data_error


def download(source: str, root: Path) -> None:
    """Fetch `source` into `root` with torchvision's downloader (md5-checked archives).

    Files land where raysl's readers look: `root/FashionMNIST/raw/`,
    `root/cifar-10-batches-py/`, `root/cifar-100-python/`, `root/stl10_binary/`.

    Raises:
        ConfigError: naming `data.download` when the download fails (e.g. offline).
    """
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        if source == "fashion_mnist":
            datasets.FashionMNIST(str(root), train=True, download=True)
        elif source == "cifar10":
            datasets.CIFAR10(str(root), train=True, download=True)
        elif source == "cifar100":
            datasets.CIFAR100(str(root), train=True, download=True)
        elif source == "stl10":
            datasets.STL10(str(root), split="train", download=True)
        else:
            raise ValueError(f"raysl cannot download {source!r}")
    except Exception as exc:  # network, disk and checksum errors all mean the same to the user
        raise data_error(
            f"downloading {source} failed ({type(exc).__name__}: {exc})",
            "check the network, or get the files yourself and set data.root to their directory",
            root,
            key="data.download",
        ) from None
