"""FashionMNIST as tensors on the training device, with a fixed train/validation/test split.

Sources, in order: `DataConfig.data_dir` (raw IDX files, gzipped or not), the Debian package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), then torchvision's download into
`~/.cache/initstudy` for machines that are online. The whole set is held as tensors and batches are
sliced from a per-epoch shuffled copy: no per-sample DataLoader in the training loop.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from study.config import DataConfig
from study.errors import BadInput

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# name -> (IDX magic number, shape); magic = 0x0000_08_0D: unsigned bytes, D dimensions.
IDX_FILES = {
    "train-images-idx3-ubyte": (2051, (60_000, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (60_000,)),
    "t10k-images-idx3-ubyte": (2051, (10_000, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (10_000,)),
}
N_CLASSES = 10


@dataclass(frozen=True)
class FashionMNIST:
    """The split, normalised with the training images' mean and std.

    x_*: (N, 1, 28, 28) float32; y_*: (N,) int64 labels 0..9. N = 50,000 / 10,000 / 10,000
    by default; 60,000 / 10,000 (the test file's) / 10,000 with the lesson's split (`n_val` 0).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float  # of the training pixels scaled to [0, 1]
    std: float
    source: str  # the directory the IDX files came from
    val_is_test: bool = False  # the lesson's split: the test file validates, so a model is scored once for both

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "FashionMNIST":
        """On `device`, the images in `dtype` (the labels stay int64)."""
        moved = {name: getattr(self, name).to(device) for name in ("y_train", "y_val", "y_test")}
        moved |= {name: getattr(self, name).to(device, dtype) for name in ("x_train", "x_val", "x_test")}
        return FashionMNIST(**moved, mean=self.mean, std=self.std, source=self.source, val_is_test=self.val_is_test)


def read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Read one IDX file (gzipped if its name ends in .gz) as a uint8 tensor of `shape`.

    Raises BadInput naming the file when it is unreadable, truncated or of another kind.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise BadInput(f"cannot read {path}: {e}; reinstall the data or pass another `data_dir`") from e
    header_len = 4 + 4 * len(shape)
    if len(raw) < header_len:
        raise BadInput(f"{path} is truncated ({len(raw)} bytes): not a FashionMNIST IDX file")
    found_magic, *dims = struct.unpack(f">{1 + len(shape)}i", raw[:header_len])
    if found_magic != magic:
        raise BadInput(f"{path} has IDX magic number {found_magic}, expected {magic}: wrong or damaged file")
    if tuple(dims) != shape:
        raise BadInput(f"{path} holds shape {tuple(dims)}, expected {shape}: not FashionMNIST")
    n_bytes = len(raw) - header_len
    if n_bytes != math.prod(shape):
        raise BadInput(f"{path} is truncated: {n_bytes} data bytes, expected {math.prod(shape)}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_len).reshape(shape)


def find_idx_dir(data_dir: str | None) -> Path:
    """The directory to read, by the order in the module docstring."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise BadInput(f"`data_dir` {data_dir} is not a directory")
        _require_files(path)
        return path
    if _has_files(DEBIAN_DIR):
        return DEBIAN_DIR
    return _download_with_torchvision()


def load_fashion_mnist(config: DataConfig, device: torch.device | str = "cpu") -> FashionMNIST:
    """The fixed split of `config`, on `device`. Loaded once per process, configuration and CPU
    thread count: the training images' float32 mean and std are sums whose rounding depends on how
    many threads take part (one and two give means a few ulps apart), and so do the runs after them."""
    return _load_cpu(find_idx_dir(config.data_dir), config.n_val, config.split_seed,
                     torch.get_num_threads()).to(torch.device(device))


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: a permutation drawn from `generator`, one gather, then contiguous slices.

    The last batch is smaller when batch_size does not divide len(x), as a DataLoader's is.
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    x, y = x[order], y[order]
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def split_indices(n: int, n_val: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, validation) into the n training-file images: a fixed permutation, cut once.
    With n_val 0 every image trains, in the file's order, and validation is the test file's."""
    if n_val == 0:
        return torch.arange(n), torch.arange(0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[:-n_val], order[-n_val:]


@functools.lru_cache(maxsize=4)
def _load_cpu(directory: Path, n_val: int, split_seed: int, threads: int) -> FashionMNIST:  # threads: a cache key
    arrays = {name: read_idx(_file(directory, name), *spec) for name, spec in IDX_FILES.items()}
    train_images = arrays["train-images-idx3-ubyte"]
    train_labels = arrays["train-labels-idx1-ubyte"]
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        if int(arrays[name].max()) >= N_CLASSES:
            raise BadInput(f"{_file(directory, name)} has labels outside 0..9: not FashionMNIST")

    train_idx, val_idx = split_indices(len(train_images), n_val, split_seed)
    scaled_train = train_images[train_idx].float() / 255
    mean, std = scaled_train.mean().item(), scaled_train.std().item()

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - mean) / std).unsqueeze(1)  # (N, 1, 28, 28)

    x_test, y_test = normalise(arrays["t10k-images-idx3-ubyte"]), arrays["t10k-labels-idx1-ubyte"].long()
    if n_val == 0:  # the lesson's split: the test file validates
        x_val, y_val = x_test, y_test
    else:
        x_val, y_val = normalise(train_images[val_idx]), train_labels[val_idx].long()
    return FashionMNIST(
        x_train=normalise(train_images[train_idx]), y_train=train_labels[train_idx].long(),
        x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        mean=mean, std=std, source=str(directory), val_is_test=n_val == 0,
    )


def _file(directory: Path, name: str) -> Path:
    plain = directory / name
    return plain if plain.exists() else directory / f"{name}.gz"


def _has_files(directory: Path) -> bool:
    return all(_file(directory, name).exists() for name in IDX_FILES)


def _require_files(directory: Path) -> None:
    missing = [name for name in IDX_FILES if not _file(directory, name).exists()]
    if missing:
        raise BadInput(f"{directory} lacks {missing[0]}[.gz] ({len(missing)} of 4 FashionMNIST files missing)")


def _download_with_torchvision() -> Path:
    """torchvision's FashionMNIST download, for machines that reach its hosts."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    cache = Path(os.environ.get("INITSTUDY_CACHE", Path.home() / ".cache" / "initstudy"))  # read at use
    raw = cache / "FashionMNIST" / "raw"
    if not _has_files(raw):
        try:
            TorchvisionFashionMNIST(str(cache), train=True, download=True)
            TorchvisionFashionMNIST(str(cache), train=False, download=True)
        except Exception as e:  # torchvision raises RuntimeError or URLError when offline
            raise BadInput(
                "FashionMNIST not found and the download failed "
                f"({type(e).__name__}); install it with 'apt-get install dataset-fashion-mnist' "
                "or pass `data_dir`"
            ) from e
    return raw

