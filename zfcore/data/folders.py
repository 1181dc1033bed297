"""Image folders prepared as in Zeiler & Fergus (2014), section 3.

The paper's pipeline: resize the smallest side of every image to 256, take the
central 256x256 region, subtract the per-pixel mean image (over all training
images), then use 224x224 sub-crops: random crops and horizontal flips while
training, and the 10 crops (4 corners and the centre, each also flipped) for
evaluation.

* ``ImageFolderDataset`` does the resize and centre crop, lazily, with Pillow,
  and returns ``uint8`` tensors; unreadable files are skipped, never fatal.
* ``mean_image`` is the per-pixel mean of such a dataset.
* ``PaperTransform`` subtracts the mean and takes the sub-crops.

Example:
    >>> ds = ImageFolderDataset("imagenet/train")            # one folder per class
    >>> mean = mean_image(ds, max_images=10_000)             # Tensor[3, 256, 256]
    >>> t = PaperTransform(mean, generator=torch.Generator().manual_seed(0))
    >>> image, label = ds[0]
    >>> t(image).shape, t.ten_crops(image).shape
    (torch.Size([3, 224, 224]), torch.Size([10, 3, 224, 224]))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.utils.data import Dataset

try:  # Pillow is needed only to read images; the transforms work without it.
    from PIL import Image
except ImportError:  # pragma: no cover - exercised only without Pillow
    Image = None

__all__ = [
    "IMAGE_EXTENSIONS",
    "CorruptImageWarning",
    "ImageFolderDataset",
    "PaperTransform",
    "load_image",
    "mean_image",
    "read_folder",
    "scan_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")

# How many skipped paths a warning names before it says "...".
_NAMED_IN_WARNING = 5


class CorruptImageWarning(UserWarning):
    """Warned when ``ImageFolderDataset`` skips files it cannot read."""


def _require_pillow() -> None:
    if Image is None:
        raise ImportError("zfcore.data.folders needs Pillow to read images: pip install pillow")


def load_image(path: str | os.PathLike, resize: int = 256) -> Tensor:
    """Read one image, resize its shortest side to ``resize``, centre-crop.

    The image is converted to RGB, resized (bilinear) so that its shorter side
    is ``resize`` pixels, the longer side keeping the aspect ratio (rounded),
    and the central ``resize x resize`` square is cut out.

    Args:
        path: the image file; any format Pillow reads.
        resize: the side S of the square output.

    Returns:
        Tensor[3, S, S], ``uint8``, channels R, G, B.

    Raises:
        Whatever Pillow raises for an unreadable file (``OSError``,
        ``SyntaxError``, ``ValueError``, ...).

    Example:
        >>> load_image("cat.jpg", 256).shape
        torch.Size([3, 256, 256])
    """
    _require_pillow()
    with Image.open(path) as img:
        img = img.convert("RGB")  # forces the decode
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, max(resize, int(h * resize / w + 0.5))
    else:
        new_w, new_h = max(resize, int(w * resize / h + 0.5)), resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - resize) // 2, (new_h - resize) // 2
    if (new_w, new_h) != (resize, resize):
        img = img.crop((left, top, left + resize, top + resize))
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(resize, resize, 3).permute(2, 0, 1).contiguous()


def _verify(path: str) -> bool:
    """Cheap check that Pillow can identify the file and its structure is sound."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # noqa: BLE001 - any failure means "skip this file"
        return False


def _name_paths(paths: list[str]) -> str:
    named = ", ".join(paths[:_NAMED_IN_WARNING])
    return named + (", ..." if len(paths) > _NAMED_IN_WARNING else "")


class ImageFolderDataset(Dataset):
    """Images in one subfolder per class, resized and centre-cropped.

    ``root/<class>/**/<file>``: class names are the subfolder names, sorted,
    and their indices are the positions in that order.  Files are found
    recursively inside each class folder (hidden files and folders skipped,
    extensions compared case-insensitively) and sorted by path.  Images are
    decoded only in ``__getitem__``.

    Unreadable files never stop an epoch:

    * at construction every file is checked with Pillow's ``verify()``; the
      files that fail are left out, listed in ``skipped`` and named in a single
      ``CorruptImageWarning``;
    * a file that passes that check but still fails to decode (a truncated
      JPEG, for instance) is replaced by the next readable item (index + 1, + 2,
      ... wrapping around), so the same index always gives the same result; the
      file is added to ``skipped`` and a ``CorruptImageWarning`` is issued the
      first time this happens.

    Args:
        root: the folder holding one subfolder per class.
        resize: the side S of the returned images (the paper: 256).
        extensions: the file endings read as images.

    Attributes:
        classes: the sorted class names.
        class_to_idx: class name -> label.
        samples: ``(path, label)`` of every image kept, in order.
        targets: the labels of ``samples``.
        skipped: the paths of the files found unreadable so far.

    Returns (``__getitem__``):
        ``(Tensor[3, S, S] uint8, label: int)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        ValueError: ``root`` has no class subfolders, a class folder holds no
            file with an image extension or only unreadable ones, or there are
            no readable images at all.

    Example:
        >>> ds = ImageFolderDataset("data/train", resize=256)
        >>> image, label = ds[0]
        >>> image.shape, image.dtype, ds.classes[label]
        (torch.Size([3, 256, 256]), torch.uint8, 'cat')
    """

    def __init__(self, root: str | os.PathLike, *, resize: int = 256,
                 extensions: Iterable[str] = IMAGE_EXTENSIONS):
        _require_pillow()
        root = os.fspath(root)
        if not isinstance(resize, int) or isinstance(resize, bool) or resize < 1:
            raise ValueError(f"ImageFolderDataset: resize must be a positive int, got {resize!r}")
        if isinstance(extensions, str):
            extensions = (extensions,)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not exts:
            raise ValueError("ImageFolderDataset: extensions is empty")
        if not os.path.exists(root):
            raise FileNotFoundError(f"ImageFolderDataset: root folder {root!r} does not exist")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"ImageFolderDataset: root {root!r} is not a folder")

        self.root = root
        self.resize = resize
        self.extensions = exts
        self.classes = sorted(e.name for e in os.scandir(root)
                              if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise ValueError(f"ImageFolderDataset: {root!r} has no class subfolders "
                             f"(expected root/<class>/<image>)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        self.skipped: list[str] = []
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            folder = os.path.join(root, name)
            files = self._image_files(folder)
            if not files:
                raise ValueError(f"ImageFolderDataset: class folder {folder!r} holds no image file "
                                 f"(extensions {', '.join(exts)})")
            kept = 0
            for path in files:
                if _verify(path):
                    self.samples.append((path, self.class_to_idx[name]))
                    kept += 1
                else:
                    self.skipped.append(path)
            if kept == 0:
                self._warn_skipped()
                raise ValueError(f"ImageFolderDataset: class folder {folder!r} holds no readable image "
                                 f"({len(files)} file(s), all unreadable)")
        if not self.samples:  # unreachable with the checks above; kept as a guard
            raise ValueError(f"ImageFolderDataset: no readable images under {root!r}")
        self._warn_skipped()
        self.targets = [label for _, label in self.samples]
        self._bad: set[int] = set()
        self._warned_at_load = False

    def _image_files(self, folder: str) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in filenames
                         if not f.startswith(".") and f.lower().endswith(self.extensions))
        return sorted(found)

    def _warn_skipped(self) -> None:
        if self.skipped:
            warnings.warn(f"ImageFolderDataset: skipped {len(self.skipped)} unreadable file(s) under "
                          f"{self.root!r}: {_name_paths(self.skipped)}", CorruptImageWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"ImageFolderDataset: index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            path, label = self.samples[i]
            try:
                return load_image(path, self.resize), label
            except Exception:  # noqa: BLE001 - substitute the next readable item
                self._bad.add(i)
                if path not in self.skipped:
                    self.skipped.append(path)
                if not self._warned_at_load:
                    self._warned_at_load = True
                    warnings.warn(f"ImageFolderDataset: {path!r} failed to decode; the next readable "
                                  f"image is returned in its place (further failures are recorded in "
                                  f".skipped without a warning)", CorruptImageWarning, stacklevel=2)
        raise RuntimeError(f"ImageFolderDataset: none of the {n} images under {self.root!r} could be decoded")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, resize={self.resize}, images={len(self)}, "
                f"classes={len(self.classes)}, skipped={len(self.skipped)})")


def mean_image(dataset, max_images: int | None = None) -> Tensor:
    """The per-pixel mean image of a dataset, as subtracted in the paper.

    Sums the images in float64 and divides by their count.  With
    ``max_images`` only that many images are used, spread evenly over the
    dataset (indices ``round(linspace(0, len - 1, max_images))``), so that a
    class-sorted dataset such as ``ImageFolderDataset`` still contributes
    images of every class.

    Args:
        dataset: indexable, with ``len``; item ``i`` is a Tensor[3, S, S] (any
            real dtype, 0..255 scale) or a tuple whose first element is one.
        max_images: the most images to average; ``None`` for all.

    Returns:
        Tensor[3, S, S], ``float32``, in 0..255 scale.

    Example:
        >>> mean = mean_image(ImageFolderDataset("data/train"), max_images=5000)
        >>> mean.shape, mean.dtype
        (torch.Size([3, 256, 256]), torch.float32)
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("mean_image: the dataset is empty")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"mean_image: max_images must be a positive int or None, got {max_images!r}")
    if max_images is None or max_images >= n:
        indices = range(n)
    else:
        indices = torch.linspace(0, n - 1, max_images, dtype=torch.float64).round().long().tolist()
    total = None
    for i in indices:
        item = dataset[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if total is None:
            if image.dim() != 3:
                raise ValueError(f"mean_image: expected images Tensor[C, H, W], got shape {tuple(image.shape)}")
            total = torch.zeros(image.shape, dtype=torch.float64)
        elif image.shape != total.shape:
            raise ValueError(f"mean_image: image {i} has shape {tuple(image.shape)}, "
                             f"the first had {tuple(total.shape)}")
        total += image.to(torch.float64)
    return (total / len(indices)).to(torch.float32)


class PaperTransform:
    """Mean subtraction and the 224x224 sub-crops of Zeiler & Fergus (2014).

    Called on an image Tensor[3, S, S] (``uint8`` from ``ImageFolderDataset``),
    it subtracts the mean image (in float32) and then

    * training (``train=True``): takes a random ``crop x crop`` window (every
      position equally likely) and flips it horizontally with probability 1/2,
      drawing from ``generator`` (so a seeded generator repeats the sequence);
    * evaluation (``train=False``): takes the centre ``crop x crop`` window.

    ``ten_crops`` gives the 10 evaluation crops.

    Note: a ``torch.Generator`` is copied into every ``DataLoader`` worker, so
    with ``num_workers > 0`` the workers draw the same crops; seed one
    transform per worker (``worker_init_fn``) if that matters.

    Args:
        mean: Tensor[3, S, S], the mean image (``mean_image``), 0..255 scale.
        crop: the side of the sub-crops (the paper: 224); ``crop <= S``.
        train: random crops and flips if true, the centre crop otherwise.
        generator: the ``torch.Generator`` for the random crops and flips;
            ``None`` uses torch's global generator.

    Returns (``__call__``):
        Tensor[3, crop, crop], ``float32``.

    Example:
        >>> t = PaperTransform(mean, crop=224, generator=torch.Generator().manual_seed(0))
        >>> t(image).shape                          # image: Tensor[3, 256, 256] uint8
        torch.Size([3, 224, 224])
        >>> PaperTransform(mean, train=False).ten_crops(image).shape
        torch.Size([10, 3, 224, 224])
    """

    def __init__(self, mean: Tensor, crop: int = 224, train: bool = True,
                 generator: torch.Generator | None = None):
        if not isinstance(mean, Tensor) or mean.dim() != 3 or mean.shape[1] != mean.shape[2]:
            shape = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
            raise ValueError(f"PaperTransform: mean must be a Tensor[3, S, S], got {shape}")
        size = mean.shape[-1]
        if not isinstance(crop, int) or isinstance(crop, bool) or not 1 <= crop <= size:
            raise ValueError(f"PaperTransform: crop must be an int in 1..{size} (the mean's size), got {crop!r}")
        self.mean = mean.detach().to(torch.float32)
        self.crop = crop
        self.train = train
        self.generator = generator

    @property
    def size(self) -> int:
        """S, the side of the images (and of the mean)."""
        return self.mean.shape[-1]

    def _centred(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor) or image.shape != self.mean.shape:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"PaperTransform: expected an image of shape {tuple(self.mean.shape)} "
                             f"(the mean's), got {shape}")
        mean = self.mean if self.mean.device == image.device else self.mean.to(image.device)
        return image.to(torch.float32) - mean

    def __call__(self, image: Tensor) -> Tensor:
        x = self._centred(image)
        c, s = self.crop, self.size
        if self.train:
            top, left = torch.randint(0, s - c + 1, (2,), generator=self.generator).tolist()
            flip = bool(torch.randint(0, 2, (1,), generator=self.generator).item())
            out = x[:, top:top + c, left:left + c]
            return out.flip(-1) if flip else out.contiguous()
        top = (s - c) // 2
        return x[:, top:top + c, top:top + c].contiguous()

    def ten_crops(self, image: Tensor) -> Tensor:
        """The 10 evaluation crops of one image, after mean subtraction.

        Order: top-left, top-right, bottom-left, bottom-right, centre, then the
        same five flipped horizontally (crop ``k + 5`` is crop ``k`` mirrored).
        Does not depend on ``train`` or the generator.

        Args:
            image: Tensor[3, S, S], as for ``__call__``.

        Returns:
            Tensor[10, 3, crop, crop], ``float32``.

        Example:
            >>> crops = PaperTransform(mean, crop=224, train=False).ten_crops(image)
            >>> torch.equal(crops[5], crops[0].flip(-1))
            True
        """
        x = self._centred(image)
        c, s = self.crop, self.size
        m = (s - c) // 2
        corners = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), (m, m)]
        five = torch.stack([x[:, t:t + c, l:l + c] for t, l in corners])
        return torch.cat([five, five.flip(-1)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, crop={self.crop}, train={self.train})"


# ----------------------------------------------------------------- a user's photo folder, read once


def scan_folder(root: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS
                ) -> tuple[list[str], list[int] | None, list[str]]:
    """The image files of a folder: ``(paths, labels, classes)``.

    With class subfolders (``root/<class>/**/<image>``, hidden entries skipped)
    the classes are the subfolder names, sorted, and ``labels`` their indices;
    a flat folder (images directly in ``root``, no class subfolder holding
    images) has ``labels`` None and no classes. Extensions are compared
    case-insensitively; paths are sorted.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or a file.
        ValueError: no image file at all (naming the extensions looked for).
    """
    root = os.fspath(root)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not os.path.exists(root):
        raise FileNotFoundError(f"data: the folder {root!r} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"data: {root!r} is not a folder")

    def images_under(folder: str, recursive: bool) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
            found.extend(os.path.join(dirpath, f) for f in filenames
                         if not f.startswith(".") and f.lower().endswith(exts))
        return sorted(found)

    subfolders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    per_class = {name: images_under(os.path.join(root, name), True) for name in subfolders}
    classes = [name for name in subfolders if per_class[name]]
    if classes:
        paths = [p for name in classes for p in per_class[name]]
        labels = [i for i, name in enumerate(classes) for _ in per_class[name]]
        return paths, labels, classes
    paths = images_under(root, False)
    if not paths:
        raise ValueError(f"data: the folder {root!r} holds no image ({', '.join(exts)}), neither directly nor in "
                         f"class subfolders")
    return paths, None, []


class _Decoded(Dataset):
    """Files decoded to RGB uint8 ``[3, H, W]`` through ``prepare``; an unreadable
    file gives None (counted by the caller, never fatal)."""

    def __init__(self, paths: list[str], prepare):
        self.paths, self.prepare = paths, prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.paths[index]) as img:
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    img = img.convert("RGBA")
                    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, img)
                img = img.convert("RGB")
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            image = data.view(img.size[1], img.size[0], 3).permute(2, 0, 1).contiguous()
            return index, self.prepare(image)
        except Exception:  # noqa: BLE001 - any decoding failure: skip the file, count it
            return index, None


def read_folder(root: str | os.PathLike, prepare, *, workers: int | None = None, progress: bool = True,
                extensions: Iterable[str] = IMAGE_EXTENSIONS):
    """Decode every image of a folder (``scan_folder``) once, in a ``DataLoader``
    with worker processes and a progress bar: ``(images, labels, classes,
    skipped)``.

    Args:
        root: a flat folder or one with class subfolders.
        prepare: ``prepare(uint8 [3, H, W]) -> uint8 [3, S, S]`` (a
            ``Preprocess.geometry``); greyscale, palette and RGBA files are
            converted to RGB first (transparency over white).
        workers: decoding processes (default: up to 4, by the CPUs).

    Returns:
        ``images`` uint8 ``[N, 3, S, S]``, ``labels`` int64 ``[N]`` or None,
        ``classes``, ``skipped`` (the paths that could not be decoded).

    Raises:
        ValueError: no image, or none could be decoded.
    """
    _require_pillow()
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    paths, labels, classes = scan_folder(root, extensions)
    if workers is None:
        workers = min(4, os.cpu_count() or 1, max(1, len(paths) // 16))
    loader = DataLoader(_Decoded(paths, prepare), batch_size=16, num_workers=workers, collate_fn=list)
    images: list[Tensor | None] = [None] * len(paths)
    with tqdm(total=len(paths), desc="decoding", unit="image", disable=not progress, leave=False) as bar:
        for batch in loader:
            for index, image in batch:
                images[index] = image
            bar.update(len(batch))
    kept = [i for i, image in enumerate(images) if image is not None]
    skipped = [paths[i] for i, image in enumerate(images) if image is None]
    if not kept:
        raise ValueError(f"data: none of the {len(paths)} image files under {os.fspath(root)!r} could be decoded")
    shapes = {tuple(images[i].shape) for i in kept}
    if len(shapes) != 1:
        raise ValueError(f"data: prepare gave images of several shapes {sorted(shapes)}; it must give one size")
    stacked = torch.stack([images[i] for i in kept])
    kept_labels = torch.tensor([labels[i] for i in kept], dtype=torch.int64) if labels is not None else None
    return stacked, kept_labels, classes, skipped
