import gzip
import math
import struct

import pytest
import torch

from study.config import DataConfig
from study.data import find_idx_dir, load_fashion_mnist, read_idx, shuffled_batches, split_indices
from study.errors import BadInput

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def write_idx(path, magic, array, gz):
    payload = struct.pack(f">{1 + array.dim()}i", magic, *array.shape) + array.numpy().tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    path = tmp_path / ("images.gz" if gz else "images")
    write_idx(path, IMAGES_MAGIC, images, gz)
    assert torch.equal(read_idx(path, IMAGES_MAGIC, (5, 28, 28)), images)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-1], "truncated"),
    (lambda raw: raw[:6], "truncated"),
    (lambda raw: struct.pack(">i", LABELS_MAGIC) + raw[4:], "magic number"),
    (lambda raw: raw[:4] + struct.pack(">i", 6) + raw[8:], "shape"),
])
def test_read_idx_rejects_damaged_files_naming_them(tmp_path, damage, message):
    images = torch.zeros((5, 28, 28), dtype=torch.uint8)
    path = tmp_path / "images"
    write_idx(path, IMAGES_MAGIC, images, gz=False)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BadInput, match=message) as info:
        read_idx(path, IMAGES_MAGIC, (5, 28, 28))
    assert str(path) in str(info.value)


def test_read_idx_rejects_a_file_that_is_not_gzip(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(b"this is not a gzip stream")
    with pytest.raises(BadInput, match=f"cannot read {path}"):
        read_idx(path, LABELS_MAGIC, (92,))


def test_data_dir_must_hold_all_four_files(tmp_path):
    with pytest.raises(BadInput, match="4 FashionMNIST files missing"):
        find_idx_dir(str(tmp_path))
    with pytest.raises(BadInput, match="not a directory"):
        find_idx_dir(str(tmp_path / "absent"))


def test_truncated_real_file_is_named(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(BadInput, match="t10k-labels-idx1-ubyte.gz is truncated"):
        load_fashion_mnist(DataConfig(data_dir=str(data_copy)))


def test_labels_outside_0_to_9_are_refused(data_copy):
    path = data_copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = 10
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(BadInput, match="labels outside 0..9"):
        load_fashion_mnist(DataConfig(data_dir=str(data_copy)))


@pytest.mark.parametrize("n, n_val, seed", [(60_000, 10_000, 0), (100, 7, 3)])
def test_split_is_a_fixed_partition(n, n_val, seed):
    train, val = split_indices(n, n_val, seed)
    assert len(val) == n_val and len(train) == n - n_val
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(n))
    again_train, again_val = split_indices(n, n_val, seed)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_indices(n, n_val, seed + 1)[1])


def test_the_lessons_split_trains_on_all_60000_and_validates_on_the_test_file(fashion):
    lesson = load_fashion_mnist(DataConfig(n_val=0))
    assert lesson.x_train.shape == (60_000, 1, 28, 28)
    assert torch.equal(lesson.y_val, lesson.y_test) and torch.equal(lesson.x_val, lesson.x_test)
    assert math.ceil(len(lesson.x_train) / 1024) == 59  # the lesson's steps per epoch; 49 by default
    assert math.ceil(len(fashion.x_train) / 1024) == 49
    assert lesson.mean != fashion.mean  # normalised with its own (all 60,000) training images


def test_real_fashion_mnist_split_and_normalisation(fashion):
    assert fashion.x_train.shape == (50_000, 1, 28, 28)
    assert fashion.x_val.shape == (10_000, 1, 28, 28)
    assert fashion.x_test.shape == (10_000, 1, 28, 28)
    assert fashion.x_train.dtype == torch.float32 and fashion.y_train.dtype == torch.int64
    # Normalised with the training images' own statistics, so those are 0 and 1 there.
    assert abs(fashion.x_train.mean().item()) < 1e-4
    assert abs(fashion.x_train.std().item() - 1) < 1e-4
    # FashionMNIST's pixel mean is 0.286 and std 0.353.
    assert fashion.mean == pytest.approx(0.286, abs=2e-3) and fashion.std == pytest.approx(0.353, abs=2e-3)
    for labels in (fashion.y_train, fashion.y_val, fashion.y_test):
        counts = labels.bincount(minlength=10)
        assert len(counts) == 10 and counts.min() > 0.08 * len(labels)
    # The test file is balanced: exactly 1000 of each class.
    assert fashion.y_test.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 8)])
def test_shuffled_batches_cover_every_sample_once(n, batch_size):
    x = torch.arange(n).float().unsqueeze(1)
    y = torch.arange(n)
    batches = list(shuffled_batches(x, y, batch_size, torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    seen = torch.cat([b[1] for b in batches])
    assert torch.equal(seen.sort().values, y)
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)  # pairs stay together


def test_shuffle_order_follows_the_generator():
    x, y = torch.zeros(100, 1), torch.arange(100)

    def order(seed):
        return torch.cat([b for _, b in shuffled_batches(x, y, 10, torch.Generator().manual_seed(seed))])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
