"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017, arXiv:1707.08819): the 1000 ILSVRC-2012 classes
at 32x32 (imagenet32) or 64x64 (imagenet64), from the npz archives image-net.org distributes (after a login:
there is no public download, and no published checksum; `bioprop data fetch` works from a mirror named by
BIOPROP_DOWNLOAD_URL).

The archives hold `train_data_batch_1.npz` .. `train_data_batch_10.npz` and `val_data.npz` (at the archive's top
or in one folder); each npz holds 'data', uint8 (N, 3*S*S): the red, green and blue planes of an SxS image, each
row-major; 'labels', 1..1000; and 'mean' (unused). They are read with numpy.load(allow_pickle=False), straight
from the archives (or from a folder of the extracted npz files): an npz holding an object array is refused.
Labels come out 0..999 (label - 1). Training: the ten batches in order (1,281,167 images); test: val_data
(50,000, the ILSVRC-2012 validation images, the split the field reports).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import numpy as np

from bioprop_cli.data import BadDataFile, DataFolder, Dataset, FileCheck, check_folder_exists, one_line
from bioprop_cli.datasets.archive import Members
from bioprop_cli.datasets.base import DatasetInfo, DownloadSource
from bioprop_cli.errors import UserError

TRAIN_BATCHES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_BATCH = "val_data.npz"
NUM_CLASSES = 1000


class Downsampled:
    """imagenet32 or imagenet64: its side, archives, and (tests: smaller) expected sizes."""

    def __init__(self, name: str, side: int, archives: tuple[str, ...], n_train: int, n_val: int):
        self.name, self.side, self.archives = name, side, archives
        self.n_train, self.n_val = n_train, n_val

    def info(self, title: str) -> DatasetInfo:
        """The dataset's registry entry: no class names shipped (ILSVRC-2012's 1000 synsets, labels 1..1000 as the
        authors' map_clsloc.txt), no published checksum, no public download (mirrors only via BIOPROP_DOWNLOAD_URL)."""
        return DatasetInfo(
            name=self.name, title=title, image_shape=self.image_shape, num_classes=NUM_CLASSES,
            split_sizes=MappingProxyType({"train": self.n_train, "test": self.n_val}), class_names=(),
            files=MappingProxyType({name: None for name in self.archives}), folder_contents=self.folder_contents,
            read=self.read, check=self.check,
            download=DownloadSource(mirrors=(), files=self.archives, verify=self.verify, present=self.present),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.side, self.side, 3)

    @property
    def folder_contents(self) -> str:
        return (f"{', '.join(self.archives)} (or their extracted {', '.join(TRAIN_BATCHES[:1])} .. "
                f"{TRAIN_BATCHES[-1]} and {VAL_BATCH})")

    def batch_sources(self, folder: Path) -> dict[str, tuple[Path, str | None]]:
        """{batch file: (archive or file, member name or None)}: the archives' members, else the loose files."""
        found = {}
        for archive in self.archives:
            path = folder / archive
            if not path.is_file():
                continue
            with Members(path) as members:
                for name in members.names():
                    base = PurePosixPath(name)
                    if base.name in (*TRAIN_BATCHES, VAL_BATCH) and len(base.parts) <= 2:
                        found.setdefault(base.name, (path, name))
        for name in (*TRAIN_BATCHES, VAL_BATCH):
            if name not in found and (folder / name).is_file():
                found[name] = (folder / name, None)
        return found

    def parse(self, source: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, S*S*3) channel-last uint8, labels (N,) int32 0..999) of one npz file's bytes."""
        pixels = 3 * self.side * self.side
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                missing = [key for key in ("data", "labels") if key not in npz.files]
                if missing:
                    raise BadDataFile(source, f"expected arrays 'data' and 'labels', found {sorted(npz.files)}")
                data, labels = npz["data"], np.asarray(npz["labels"])
        except BadDataFile:
            raise
        except ValueError as error:  # numpy's refusal of an object array (a pickle) without allow_pickle
            raise BadDataFile(source, f"holds an object array (a pickle), which bioprop never loads "
                                      f"({one_line(error)})") from None
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
            raise BadDataFile(source, f"expected an npz file, found a truncated or corrupt one ({one_line(error)})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
            raise BadDataFile(source, f"expected 'data' of uint8 and shape Nx{pixels} ({self.side}x{self.side} RGB), "
                                      f"found {data.dtype} of shape {'x'.join(map(str, data.shape))}")
        if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
            raise BadDataFile(source, f"expected {len(data)} integer 'labels', found {labels.dtype} of shape "
                                      f"{'x'.join(map(str, labels.shape))}")
        bad = np.flatnonzero((labels < 1) | (labels > NUM_CLASSES))
        if bad.size:
            raise BadDataFile(source, f"label {labels[bad[0]]} at position {bad[0]}, expected 1..{NUM_CLASSES} "
                                      f"({bad.size} bad labels in all)")
        # the R, G, B planes of each row -> (S, S, 3) channel-last
        images = data.reshape(-1, 3, self.side, self.side).transpose(0, 2, 3, 1).reshape(len(data), pixels)
        return np.ascontiguousarray(images), (labels - 1).astype(np.int32)

    def read_batch(self, where: tuple[Path, str | None]) -> tuple[np.ndarray, np.ndarray]:
        path, member = where
        if member is None:
            try:
                raw = path.read_bytes()
            except OSError as error:
                raise BadDataFile(path, f"cannot read the file ({error.strerror or error})") from None
            return self.parse(str(path), raw)
        with Members(path) as members:
            return self.parse(f"{path} member {member}", members.read(member))

    def read_all(self, folder: Path) -> tuple[np.ndarray, ...]:
        sources = self.batch_sources(folder)
        missing = [name for name in (*TRAIN_BATCHES, VAL_BATCH) if name not in sources]
        if missing:
            raise UserError(f"{folder}: missing {', '.join(missing)}; the folder must hold {self.folder_contents} "
                            f"(from image-net.org's downsampled ImageNet, after a login)")
        train = [self.read_batch(sources[name]) for name in TRAIN_BATCHES]
        x_test, y_test = self.read_batch(sources[VAL_BATCH])
        x_train, y_train = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
        for split, n, expected in (("training", len(x_train), self.n_train), ("validation", len(x_test), self.n_val)):
            if n != expected:
                raise BadDataFile(folder, f"expected {expected} {split} images (the published files), found {n}")
        return x_train, y_train, x_test, y_test

    def read(self, folder: DataFolder, options=None) -> Dataset:
        check_folder_exists(folder.path, folder.origin, self.folder_contents)
        x_train, y_train, x_test, y_test = self.read_all(folder.path)
        return Dataset(self.name, x_train, y_train, x_test, y_test,
                       source=f"files in {folder.path} (from {folder.origin})", num_classes=NUM_CLASSES)

    def check(self, folder: Path) -> list:
        check_folder_exists(Path(folder), "", self.folder_contents)
        sources = self.batch_sources(Path(folder))
        checks = []
        for name in (*TRAIN_BATCHES, VAL_BATCH):
            if name not in sources:
                checks.append(FileCheck(name, None, wanted=name))
                continue
            try:
                self.read_batch(sources[name])
                checks.append(FileCheck(name, sources[name][0], checksummed=False))
            except BadDataFile as error:
                checks.append(FileCheck(name, sources[name][0], error.problem))
        return checks

    def verify(self, dataset: str, source: str, file_name: str, raw: bytes) -> None:
        """A downloaded archive: every npz member in it parses (no checksum is published)."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(raw))
        except zipfile.BadZipFile as error:
            raise BadDataFile(source, f"expected a zip archive, found a truncated or corrupt one ({one_line(error)})") from None
        with archive:
            for name in archive.namelist():
                if name.endswith(".npz"):
                    self.parse(f"{source} member {name}", archive.read(name))

    def present(self, folder: Path, file_name: str) -> bool:
        return (folder / file_name).is_file()
