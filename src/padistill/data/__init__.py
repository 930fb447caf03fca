"""Datasets and preprocessing: the first stage of the pipeline.

Input: a dataset name + data root (CIFAR-10/100 pickles or .npz, Tiny ImageNet folders, image folders,
.npz archives, scikit-learn digits).
Output: `Dataset` objects (uint8 images in dataset order) and fitted `Preprocessor`s (ZCA / normalize).
Purpose: one import for the rest of the package:

    from padistill.data import load_dataset, fit_preprocessor
    ds = load_dataset("cifar10", root="../shared/data")
    zca = fit_preprocessor("zca", ds.x_train, eps=0.1)
    x = zca.pre(ds.x_train)

Importing the loader modules below registers them (`list_datasets()` shows the names).
"""

from padistill.data import cifar, digits, folders, formats, hf, tinyimagenet  # noqa: F401  (register loaders)
from padistill.data.dataset import Dataset
from padistill.data.registry import default_data_root, list_datasets, load_dataset, register_dataset
from padistill.data.transforms import Preprocessor, cached_preprocessor, fit_preprocessor, load_preprocessor

__all__ = [
    "Dataset",
    "Preprocessor",
    "cached_preprocessor",
    "default_data_root",
    "fit_preprocessor",
    "list_datasets",
    "load_dataset",
    "load_preprocessor",
    "register_dataset",
]
