"""The datasets `data=<name>` can choose, one frozen spec each: where the files are and what they hold.

A dataset is a spec here plus its config group file `conf/data/<name>.yaml`. The YAML repeats
`num_classes` and `image_size` so that model presets can interpolate them (`${data.num_classes}`);
`data.check_data_config` refuses a config whose values disagree with the spec. The AutoAugment policy
is a choice rather than a fact: the spec names the conventional one, `data.autoaugment_policy` picks.
"""
from dataclasses import dataclass

from errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    name: str                # the config option (data=<name>) and data.name
    title: str               # how messages name it
    folder: str              # the official archive unpacks into <data.root>/<folder>/
    train_files: tuple       # pickled dicts {'data': uint8 [N, 3 * size * size], <label_key>: [N]}
    test_files: tuple
    label_key: str
    num_classes: int
    image_size: int          # square RGB images
    train_images: int        # the official split's sizes
    test_images: int
    meta_file: str           # pickled dict whose <names_key> lists the class names, label order
    names_key: str
    archive_url: str
    archive_md5: str         # of the archive; the unpacked files are checked by structure, not md5
    root_env: str            # environment variable that data.root defaults to
    autoaugment_policy: str  # the conventional torchvision AutoAugmentPolicy value for this dataset


CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",), label_key="labels",
    num_classes=10, image_size=32, train_images=50_000, test_images=10_000,
    meta_file="batches.meta", names_key="label_names",
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a", root_env="CIFAR10_ROOT", autoaugment_policy="cifar10")

# Fine labels (100 classes); the 20 coarse superclasses are in the files too but not used.
# torchvision has no CIFAR-100 AutoAugment policy: the CIFAR10 one is the usual choice (Cubuk et al. 2019
# report CIFAR-100 results with the policy found on reduced CIFAR-10).
CIFAR100 = DatasetSpec(
    name="cifar100", title="CIFAR-100", folder="cifar-100-python",
    train_files=("train",), test_files=("test",), label_key="fine_labels",
    num_classes=100, image_size=32, train_images=50_000, test_images=10_000,
    meta_file="meta", names_key="fine_label_names",
    archive_url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85", root_env="CIFAR100_ROOT", autoaugment_policy="cifar10")

DATASETS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def get_dataset(name) -> DatasetSpec:
    """The spec registered under `name`; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"data.name={name}: use one of {', '.join(DATASETS)} (choose it with data=<name>)") from None
